"""One exporter for fitted scenes and device profiles, driven by one formats table.

``edgedp export SOURCE -o OUT --format F`` is :func:`run_export`:

1. the source: a fit OUTDIR / scene bundle (graphs render, refocus, gd) or a ``PHONE.profile``
   (gd and the instant kernels); the table :func:`export_sources` says what each writes and how it
   is loaded (once), exported and verified;
2. the options: every option the format or the source would ignore is refused (one line, before
   any work), values are range-checked (opset 13-17, finite non-negative tolerances, ...);
3. for engines, TensorRT and a CUDA GPU must be there (:func:`edgedp.deploy.tensorrt.check_engine_support`),
   again before anything is written;
4. everything is written into a staging folder beside OUT (``.OUT.<pid>-<hex>.partial``,
   :func:`edgedp.io.atomic.folder_writer`): the ONNX graphs
   (:func:`edgedp.deploy.onnx_export.export_scene` / :func:`edgedp.deploy.profile_export.export_profile`),
   their verification, for ``--half`` an FP16 verification of its own, the engines; only when all
   of it succeeded is the staging folder swapped in for OUT by two renames (the user's other
   files in OUT carried over as hard links).  A failure or a kill leaves OUT as it was; a kill
   between the renames is undone by the next writer or reader of OUT.

The formats table is :func:`export_formats` (like ultralytics' ``export_formats()``): name, the
``--format`` argument, the file suffix, whether engines are built, and the options it takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from edgedp_runtime import schema

from ..errors import EdgedpError, InputError, OutputError
from ..io.atomic import folder_writer, recover_output
from ..io.writers import write_json

__all__ = [
    "ExportFormat",
    "ExportOptions",
    "ExportSource",
    "FP16_TOLERANCE",
    "build_engines",
    "check_options",
    "export_formats",
    "export_sources",
    "gd_engine_profile",
    "run_export",
    "source_kind",
    "verification_passed",
]

#: Opsets the exporter writes: 13 is the first with Pad / Resize / Slice parameters as inputs the
#: graphs use; 17 is the last TensorRT 8.5 (JetPack 5.1) parses.
OPSET_RANGE = (13, 17)
#: Tolerance of the FP16 verification (``--half``): per output, ``max_abs <= atol + rtol * max
#: |reference|``.  FP16 keeps 11 significant bits (relative rounding 2^-11 = 4.9e-4 per stored
#: value); an output that went through a few dozen rounded intermediates is off by about 1e-3 of
#: its range (README: measured per graph).
FP16_TOLERANCE = {"atol": 1e-3, "rtol": 5e-3}
FP16_METHOD = (
    "ONNX Runtime (CPU) on the graph with every float tensor rounded to FP16 (edgedp.deploy.onnx_tools.emulate_fp16: "
    "FP16 storage, FP32 arithmetic per op), against the FP32 PyTorch reference"
)


@dataclass(frozen=True)
class ExportFormat:
    """One row of the formats table."""

    name: str
    argument: str
    suffix: str
    engines: bool
    arguments: tuple[str, ...]
    description: str


#: Options every format takes.
COMMON_ARGUMENTS = ("opset", "dynamic", "verify", "atol", "rtol", "instant_field", "instant_groups")


def export_formats() -> tuple[ExportFormat, ...]:
    """The formats table: what ``--format`` can be, what it writes and which options it takes."""
    return (
        ExportFormat("ONNX", "onnx", schema.ONNX_SUFFIX, False, COMMON_ARGUMENTS,
                     "float32 ONNX graphs (opset 13-17) for ONNX Runtime or trtexec on the device"),
        ExportFormat("TensorRT engine", "engine", schema.ENGINE_SUFFIX, True, COMMON_ARGUMENTS + ("half", "workspace"),
                     "the ONNX graphs, then serialized TensorRT engines built here (needs TensorRT and a CUDA GPU)"),
    )


@dataclass(frozen=True)
class ExportSource:
    """What a source exports (one row of the sources table): its graphs, extra files and the
    options it does not take (with why), and how it is exported: ``load`` (source path -> the
    loaded source; read errors before anything is written), ``export`` (loaded source, staging
    folder, :class:`ExportOptions` -> the sidecar dict, graphs and files written) and ``verify``
    (staging folder, loaded source, ``atol=``, ``rtol=``, ``fp16=`` -> the verification dict)."""

    kind: str
    graphs: tuple[str, ...]
    files: tuple[str, ...]
    ignores: Mapping[str, str]
    load: Callable[[Path], Any]
    export: Callable[[Any, Path, "ExportOptions"], dict[str, Any]]
    verify: Callable[..., dict[str, Any]]


def _load_scene(path: Path) -> Any:
    from ..formats.bundle import load_bundle  # noqa: PLC0415

    return load_bundle(scene_folder(path))


def _export_scene(bundle: Any, staging: Path, options: "ExportOptions") -> dict[str, Any]:
    from .onnx_export import ExportConfig, export_scene  # noqa: PLC0415

    config = ExportConfig(opset=options.opset, atol=options.atol, rtol=options.rtol)
    return export_scene(bundle, staging, config, overwrite=True, dynamic=options.dynamic, verify=options.verify)


def _verify_scene(staging: Path, bundle: Any, **tolerances) -> dict[str, Any]:
    from .onnx_export import verify_export  # noqa: PLC0415

    return verify_export(staging, bundle, **tolerances)


def _load_profile(path: Path) -> Any:
    from .profile_export import load_profile_source  # noqa: PLC0415

    return load_profile_source(path)


def _export_profile(loaded: Any, staging: Path, options: "ExportOptions") -> dict[str, Any]:
    from .profile_export import export_profile  # noqa: PLC0415

    profile, path, _ = loaded
    return export_profile(profile, staging, path=path, opset=options.opset, dynamic=options.dynamic, verify=options.verify,
                          overwrite=True, atol=options.atol, instant_field=options.instant_field,
                          kernel_groups=options.instant_groups)


def _verify_profile(staging: Path, loaded: Any, **tolerances) -> dict[str, Any]:
    from .profile_export import verify_profile_export  # noqa: PLC0415

    return verify_profile_export(staging, loaded[0], **tolerances)


def export_sources() -> dict[str, ExportSource]:
    """The sources table: a device profile file and a fitted scene (:func:`source_kind`)."""
    return {
        "profile": ExportSource(
            "profile", schema.SOURCE_GRAPHS["profile"], schema.SOURCE_FILES["profile"],
            {"rtol": "a profile export has only gd.onnx, verified by its absolute error (--atol)"},
            load=_load_profile, export=_export_profile, verify=_verify_profile,
        ),
        "scene": ExportSource(
            "scene", schema.SOURCE_GRAPHS["scene"], schema.SOURCE_FILES["scene"],
            {"instant_field": "a scene's graphs carry its own kernels; the instant path is a profile's",
             "instant_groups": "a scene's graphs carry its own kernels; the instant path is a profile's"},
            load=_load_scene, export=_export_scene, verify=_verify_scene,
        ),
    }


@dataclass(frozen=True)
class ExportOptions:
    """Export settings (CLI flags in brackets).

    opset: ONNX opset of the graphs (``--opset``, 13-17; 17 is the last TensorRT 8.5 parses).
    dynamic: gd.onnx takes any H, W (multiples of 8 * input_scale) or only the source's size.
    verify: run the graphs in ONNX Runtime (CPU) against PyTorch and record the errors.
    atol, rtol: verification tolerances (scene: ``max_abs <= atol + rtol * max |ref|``; gd and
        profiles: ``max_abs <= atol``).
    half: engines may use FP16 kernels (``--half``; the gd standardization stays FP32) and the
        sidecar records an FP16 verification (:data:`FP16_TOLERANCE`).
    workspace: TensorRT builder workspace limit in MiB.
    instant_field: profiles with a kernel field: the instant path solves with the field's
        per-cell kernels (``patch_kernels.npy``; one solve per group of cells,
        ``edgedp_runtime.instant.solve_latent_grouped``), or, False (``--instant-mean-kernels``),
        with their mean over the cells (``tools/bench_instant_pixel.py`` compares the two).
    instant_groups: with the field, the most groups of cells the instant path solves apart
        (``--instant-groups``, >= 1; None: ``profile_export.INSTANT_KERNEL_GROUPS``, 8): more
        groups follow the field more closely and cost more time per call.
    """

    opset: int = 17
    dynamic: bool = True
    verify: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3
    half: bool = False
    workspace: int = 1024
    instant_field: bool = True
    instant_groups: int | None = None


FLAGS = {
    "opset": "--opset", "dynamic": "--dynamic/--static", "verify": "--verify/--no-verify", "atol": "--atol",
    "rtol": "--rtol", "half": "--half", "workspace": "--workspace", "instant_field": "--instant-field/--instant-mean-kernels",
    "instant_groups": "--instant-groups",
}


def format_by_argument(argument: str) -> ExportFormat:
    for fmt in export_formats():
        if fmt.argument == argument:
            return fmt
    names = ", ".join(f.argument for f in export_formats())
    raise InputError(f"--format {argument}: unknown format (one of {names})")


def source_kind(path: Path) -> str:
    """``profile`` for a profile file (or a missing ``*.profile``), else ``scene``."""
    return "profile" if path.is_file() or (not path.exists() and path.suffix == ".profile") else "scene"


def check_options(fmt: ExportFormat, source: ExportSource, given: Mapping[str, Any]) -> ExportOptions:
    """The :class:`ExportOptions` from the explicitly ``given`` ones; refuses (InputError, one line)
    an option the format or source ignores and a value out of range."""
    known = {f.name for f in fields(ExportOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"unknown export options {unknown}")
    for name in given:
        if name not in fmt.arguments:
            formats = [f.argument for f in export_formats() if name in f.arguments]
            raise InputError(
                f"{FLAGS[name]} applies to --format {' / '.join(formats)} only, not to --format {fmt.argument}"
                + (" (the ONNX graphs are float32; FP16 is a property of TensorRT engines)" if name == "half" else "")
            )
        if name in source.ignores:
            raise InputError(f"{FLAGS[name]} does not apply to a {source.kind} export: {source.ignores[name]}")
    options = replace(ExportOptions(), **dict(given))
    if not options.verify:
        for name in ("atol", "rtol"):
            if name in given:
                raise InputError(f"{FLAGS[name]} is a verification tolerance: it does not apply with --no-verify")
    lo, hi = OPSET_RANGE
    if not lo <= int(options.opset) <= hi:
        raise InputError(f"--opset {options.opset}: edgedp exports opsets {lo} to {hi} (17: the last TensorRT 8.5 / JetPack 5.1 parses)")
    for name in ("atol", "rtol"):
        value = float(getattr(options, name))
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{FLAGS[name]} {value}: must be a finite number >= 0")
    if int(options.workspace) < 1:
        raise InputError(f"--workspace {options.workspace}: must be >= 1 MiB")
    if options.instant_groups is not None:
        if int(options.instant_groups) < 1:
            raise InputError(f"--instant-groups {options.instant_groups}: must be >= 1")
        if not options.instant_field:
            raise InputError("--instant-groups groups the kernel field's cells: it does not apply with --instant-mean-kernels")
    return options


def gd_engine_profile(sidecar: dict) -> dict | None:
    """The optimization profile of a dynamic gd.onnx engine: min one block (multiple_of^2), opt
    the source's size rounded down to the multiple, max twice that; None for a static graph."""
    g = sidecar["graphs"]["gd"]
    if not g.get("dynamic"):
        return None
    m = int(g.get("multiple_of", schema.DEFAULT_MULTIPLE_OF))
    hh, ww = max(int(sidecar["height"]) // m * m, m), max(int(sidecar["width"]) // m * m, m)
    return {"pair": ((1, 2, m, m), (1, 2, hh, ww), (1, 2, 2 * hh, 2 * ww))}


def _targets(source: ExportSource, fmt: ExportFormat) -> list[str]:
    graphs = [schema.GRAPHS[g] for g in source.graphs]
    # a graph's external data file (past schema.EXTERNAL_DATA_THRESHOLD) is one of its files
    names = [g.file for g in graphs] + [schema.external_data_file(g.file) for g in graphs] + list(source.files)
    names += [schema.SIDECAR_NAME]
    if fmt.engines:
        names += [g.engine_file for g in graphs]
    return names


def _stale(source: ExportSource, produced: set[str]) -> list[str]:
    """Known export files of any format that a previous export may have left (engines of the
    ONNX files being replaced): removed on --overwrite so no engine outlives its graph."""
    every = set()
    for src in export_sources().values():
        for fmt in export_formats():
            every.update(_targets(src, fmt))
    return sorted(every - produced)


def _dropped(source: ExportSource, produced: set[str], overwrite: bool) -> set[str]:
    """Entries of the old OUT the swap does not carry over: the export files this export
    replaces and (with ``overwrite``) the stale ones of other formats (engines of the replaced
    graphs), so no engine outlives its graph; the user's own files stay."""
    return set(produced) | (set(_stale(source, produced)) if overwrite else set())


def run_export(
    source_path: Path | str,
    out: Path | str,
    fmt: str = "onnx",
    given: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Export a fitted scene (fit OUTDIR or bundle folder) or a device profile file into ``out``
    (module docstring); ``given``: the options set explicitly (names of :class:`ExportOptions`).
    Returns the sidecar dict (its ``verification`` says whether the graphs passed).

    Raises:
        InputError: an option the format / source ignores or out of range, an unreadable source.
        OutputError: OUT holds an export and ``overwrite`` is False, OUT is a file or not writable.
        EdgedpError: ``--format engine`` without TensorRT or a CUDA GPU; an engine build failed.
    """
    source_path, out = Path(source_path), Path(out)
    spec = format_by_argument(fmt)
    source = export_sources()[source_kind(source_path)]
    options = check_options(spec, source, dict(given or {}))
    loaded = source.load(source_path)  # read errors before anything is written
    if spec.engines:
        from .tensorrt import check_engine_support  # noqa: PLC0415

        check_engine_support()
    recover_output(out)  # an export killed between its two renames: the old OUT is back first
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    existing = [out / name for name in _targets(source, spec) if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists (use --overwrite to replace it)")
    # All or nothing (issue 17): everything goes into a staging folder that is swapped in for OUT
    # by two renames once complete, so a reader (or a kill) sees the old export or the new one.
    drop: set[str] = set()
    try:
        with folder_writer(out, keep=lambda name: name not in drop) as staging:
            try:
                log(f"export   {source.kind} {source_path} -> {out} (--format {spec.argument}, opset {options.opset})")
                sidecar = source.export(loaded, staging, options)
                if spec.engines:
                    if options.half and options.verify:
                        log("verify   FP16 emulation of every graph (ONNX Runtime, CPU)")
                        fp16 = source.verify(staging, loaded, **FP16_TOLERANCE, fp16=True)
                        sidecar["verification_fp16"] = {"method": FP16_METHOD, **fp16}
                    sidecar["engine"] = build_engines(staging, sidecar, options, log)
                write_json(staging / schema.SIDECAR_NAME, sidecar, overwrite=True)
                drop.update(_dropped(source, {p.name for p in staging.iterdir()}, overwrite))
            except EdgedpError as err:  # name OUT, not the staging folder that is about to go
                raise type(err)(str(err).replace(str(staging), str(out))) from None
    except OSError as err:
        raise OutputError(f"cannot write the export into {out} ({err.strerror or err})") from None
    return sidecar


def build_engines(folder: Path, sidecar: dict[str, Any], options: ExportOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """A TensorRT engine of every graph of ``sidecar`` in ``folder`` (each graph's entry gets its
    ``engine`` file); returns the sidecar's ``engine`` entry (half, workspace, TensorRT version,
    layers pinned to FP32)."""
    from .tensorrt import build_engine  # noqa: PLC0415

    pinned_total, version = 0, "?"
    for name, entry in sidecar["graphs"].items():
        engine = schema.GRAPHS[name].engine_file
        log(f"engine   building {engine} ({'FP16' if options.half else 'FP32'}) ...")
        info = build_engine(
            folder / entry["file"], folder / engine, half=options.half, workspace_mib=options.workspace,
            dynamic_shapes=gd_engine_profile(sidecar) if name == "gd" else None,
            fp32_layers=entry.get(schema.FP32_NODES_KEY, ()),
        )
        entry["engine"] = engine
        pinned_total += len(info["fp32_layers"])
        version = info["tensorrt"]
    return {"half": options.half, "workspace_mib": options.workspace, "tensorrt": version, "fp32_layers": pinned_total}


def scene_folder(path: Path) -> Path:
    """A fit OUTDIR (with scene/) or the scene bundle folder itself."""
    if not path.exists():
        raise InputError(f"scene folder {path} does not exist (expected a fit OUTDIR or its scene/ folder)")
    if not path.is_dir():
        raise InputError(f"{path} is not a folder (expected a fit OUTDIR or its scene/ folder)")
    if (path / "scene" / "scene.json").is_file() and not (path / "scene.json").is_file():
        return path / "scene"
    if not (path / "scene.json").is_file():
        raise InputError(f"{path} holds no scene bundle (no scene.json or scene/scene.json): run edgedp fit first")
    return path


def verification_passed(sidecar: dict) -> bool:
    """Whether every recorded verification (FP32 and, with --half, FP16) passed."""
    ok = all(bool(r.get("passed")) for r in sidecar.get("verification", {}).values())
    fp16 = {k: v for k, v in sidecar.get("verification_fp16", {}).items() if k != "method"}
    return ok and all(bool(r.get("passed")) for r in fp16.values())

