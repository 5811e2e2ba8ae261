"""The export folder's schema, defined once: file names, graph roles, format versions, the sidecar
``export.json`` and the instant settings.  ``edgedp export`` (the PyTorch side) writes it with
:func:`new_sidecar` / :func:`instant_entry`; the runners read it with :func:`load_export` /
:func:`read_instant_settings`.  Change a name here and both sides follow.

Sidecar ``export.json`` (``format_version`` 1)::

    {"format": "edgedp-export", "format_version": 1, "edgedp_version": str,
     "runtime_version": str (the edgedp-runtime that wrote the schema),
     "source": "scene" | "profile", "scene_id": str (bundle id, or the device name of a profile),
     "created": ISO 8601 UTC, "opset": int, "height": int, "width": int, "layers": int,
     "kernel_size": int, "radii": [float] * layers, "kernel_model": str,
     "input_normalization": str,
     "graphs": {name: entry},             name in GRAPHS; entry: {"file": "<name>.onnx",
                                          "inputs": {tensor: shape}, "outputs": {tensor: shape},
                                          ...graph-specific keys, "engine": "<name>.engine" once
                                          built, "external_data": "<name>.onnx.data" when
                                          the graph's tensors are in an external data file
                                          (a graph of EXTERNAL_DATA_THRESHOLD bytes or more)};
                                          shapes hold ints, or strings for dynamic dims
     "verification": {graph: {"max_abs", "max_rel", "atol", ["rtol"], "passed", "outputs":
                      {tensor: {"max_abs", "max_rel"}}, ...}}   ({} when not verified)
     "verification_fp16": {"method": str, graph: {...as above}}  (only for --half engines)
     "engine": {"half", "workspace_mib", "tensorrt", "fp32_layers"}   (only --format engine)
     "notes": [str] (optional),
     scene exports:   "bundle": absolute path of the fitted scene bundle
     profile exports: "profile": {...the profile's input, kernel and G_D settings...},
                      "instant": instant_entry(...)}

Graph entries (besides ``file``, ``inputs``, ``outputs``):
    render:  "test_input": "render_latent.npy", "macs_per_pixel": int
    refocus: "test_input": "allinfocus.npy", "levels": R, "bank": "refocus_bank.npy",
             "defaults": {"focus": 0.0, "aperture": 1.0}
    gd:      "dynamic": bool, "multiple_of": int, "input_scale": int, "input_normalization",
             "layers", "radii", "opset", "fp32_nodes": [ONNX node names that an FP16 engine
             keeps in FP32 (the input standardization)]

Imports only the standard library (no numpy, no torch): the exporter imports it too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import RunnerError
from .atomic import recover

SIDECAR_NAME = "export.json"
FORMAT_NAME = "edgedp-export"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
SOURCES = ("scene", "profile")
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIX = ".engine"
REFOCUS_BANK = "refocus_bank.npy"
KERNELS_FILE = "kernels.npy"
#: Per-cell layer kernels (Pr, Pc, 2, L, K, K) of a profile with a kernel field (optional).
PATCH_KERNELS_FILE = "patch_kernels.npy"
DEFAULT_MULTIPLE_OF = 16
#: Sidecar key of the gd graph: node names an FP16 engine must keep in FP32.
FP32_NODES_KEY = "fp32_nodes"
#: Sidecar key of a graph entry naming its external data file.
EXTERNAL_DATA_KEY = "external_data"
#: A graph whose serialized size reaches this many bytes is saved with its tensors in one
#: external data file beside it (:func:`external_data_file`): protobuf cannot serialize a
#: message of 2 GiB or more (ONNX's 2 GB limit), and a baked render / refocus graph of a large
#: scene holds its weights as constants.  Just under 2 GiB, so that the graph's own structure
#: and metadata still fit.  ONNX Runtime and TensorRT (``parse_from_file``) find the data file
#: beside the graph they load by path.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def external_data_file(onnx_file: str) -> str:
    """Name of the external data file of the graph file ``onnx_file``: ``render.onnx`` ->
    ``render.onnx.data``."""
    return onnx_file + ".data"


@dataclass(frozen=True)
class GraphSpec:
    """One graph kind: its ONNX file, the roles of its inputs / outputs (each role a tuple of
    accepted tensor names, the first is what the exporter writes) and its default test input."""

    name: str
    file: str
    inputs: tuple[tuple[str, ...], ...]
    outputs: tuple[tuple[str, ...], ...]
    test_input: str | None = None

    @property
    def engine_file(self) -> str:
        return Path(self.file).stem + ENGINE_SUFFIX

    @property
    def input_names(self) -> list[str]:
        return [aliases[0] for aliases in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [aliases[0] for aliases in self.outputs]


GRAPHS: dict[str, GraphSpec] = {
    "render": GraphSpec("render", "render.onnx", (("latent",),), (("left",), ("right",), ("allinfocus",)), "render_latent.npy"),
    # ONNX names are SSA: the output cannot share the input's name "image"; older exports used it
    "refocus": GraphSpec(
        "refocus", "refocus.onnx", (("image",), ("focus",), ("aperture",)), (("refocused", "image"),), "allinfocus.npy"
    ),
    "gd": GraphSpec("gd", "gd.onnx", (("pair",),), (("alphas",), ("defocus",))),
}
#: Which graphs each source exports (and the extra files beside them).
SOURCE_GRAPHS: dict[str, tuple[str, ...]] = {"scene": ("render", "refocus", "gd"), "profile": ("gd",)}
SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "scene": (GRAPHS["render"].test_input, GRAPHS["refocus"].test_input, REFOCUS_BANK),  # type: ignore[dict-item]
    "profile": (KERNELS_FILE, PATCH_KERNELS_FILE),  # the second only with a kernel field
}


def new_sidecar(
    *,
    source: str,
    edgedp_version: str,
    scene_id: str,
    opset: int,
    height: int,
    width: int,
    layers: int,
    kernel_size: int,
    radii: list[float],
    kernel_model: str,
    input_normalization: str,
    graphs: dict[str, dict],
    **extra: Any,
) -> dict[str, Any]:
    """The sidecar dict of an export (module docstring); ``extra`` adds source-specific keys
    (``bundle``, ``profile``, ``instant``, ``notes``).  ``verification`` starts empty."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    unknown = sorted(set(graphs) - set(GRAPHS))
    if unknown:
        raise ValueError(f"unknown graphs {unknown}")
    side: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "edgedp_version": str(edgedp_version),
        "runtime_version": __version__,
        "source": source,
        "scene_id": str(scene_id),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opset": int(opset),
        "height": int(height),
        "width": int(width),
        "layers": int(layers),
        "kernel_size": int(kernel_size),
        "radii": [float(r) for r in radii],
        "kernel_model": str(kernel_model),
        "input_normalization": str(input_normalization),
        "graphs": {name: {"file": GRAPHS[name].file, **entry} for name, entry in graphs.items()},
        "verification": {},
    }
    side.update(extra)
    return side


# --- the instant settings ----------------------------------------------------------------------
#: Numeric settings of the instant path and their types (the sidecar's ``instant`` object holds
#: gain / floor / ceil under ``latent_reg``, the rest at its top level).
INSTANT_LATENT_REG = ("gain", "floor", "ceil")
#: The final TV deconvolution's settings (edgedp.fit.deconvolution.DeconvolutionConfig's names
#: prefixed ``tv_``), under ``deconvolution`` in the sidecar's ``instant`` object.
INSTANT_DECONVOLUTION = {"iterations": "tv_iterations", "beta_start": "tv_beta_start",
                         "beta_growth": "tv_beta_growth", "min_layer_weight": "tv_min_layer_weight"}
INSTANT_SETTINGS: dict[str, type] = {
    "gain": float, "floor": float, "ceil": float, "fuse_window": int, "weight_floor": float, "pad": int,
    "tv_iterations": int, "tv_beta_start": float, "tv_beta_growth": float, "tv_min_layer_weight": float,
    "kernel_groups": int,
}


def instant_entry(
    *, kernel_size: int, pad: int, latent_reg: dict[str, float], fuse_window: int, weight_floor: float,
    deconvolution: dict[str, float] | None = None, kernels: str = KERNELS_FILE,
    patch_kernels: str | None = None, patch_grid: tuple[int, int] | None = None, kernel_groups: int | None = None,
) -> dict[str, Any]:
    """The sidecar's ``instant`` object: ``{"kernels", "kernel_size", "pad", "latent_reg": {"gain",
    "floor", "ceil"}, "fuse_window", "weight_floor", "deconvolution": {"iterations", "beta_start",
    "beta_growth", "min_layer_weight"}}`` and, for a profile with a kernel field, ``"patch_kernels":
    file of the (Pr, Pc, 2, L, K, K) per-cell kernels, "patch_grid": [Pr, Pc], "kernel_groups": G`` (meanings:
    edgedp_runtime.instant)."""
    missing = [k for k in INSTANT_LATENT_REG if k not in latent_reg]
    if missing:
        raise ValueError(f"latent_reg lacks {missing}")
    entry = {
        "kernels": str(kernels),
        "kernel_size": int(kernel_size),
        "pad": int(pad),
        "latent_reg": {k: float(latent_reg[k]) for k in INSTANT_LATENT_REG},
        "fuse_window": int(fuse_window),
        "weight_floor": float(weight_floor),
    }
    if patch_kernels is not None:
        if patch_grid is None:
            raise ValueError("patch_kernels needs its patch_grid")
        entry["patch_kernels"] = str(patch_kernels)
        entry["patch_grid"] = [int(g) for g in patch_grid]
        if kernel_groups is not None:
            entry["kernel_groups"] = int(kernel_groups)
    if deconvolution is not None:
        entry["deconvolution"] = {k: float(deconvolution[k]) for k in INSTANT_DECONVOLUTION}
        entry["deconvolution"]["iterations"] = int(deconvolution["iterations"])
    return entry


def read_instant_settings(entry: dict) -> dict[str, float | int]:
    """The numeric settings of a sidecar ``instant`` object, flat (``gain``, ``floor``, ``ceil``,
    ``fuse_window``, ``weight_floor``, ``pad``, ``tv_iterations``, ``tv_beta_start``,
    ``tv_beta_growth``, ``tv_min_layer_weight``, ``kernel_groups``); missing keys are left out.
    One-line :class:`RunnerError` for a non-numeric or non-finite value or ``kernel_groups < 1``."""
    reg = entry.get("latent_reg") or {}
    raw = {k: reg.get(k) for k in INSTANT_LATENT_REG}
    deconv = entry.get("deconvolution") or {}
    flat = {v: k for k, v in INSTANT_DECONVOLUTION.items()}
    raw.update({k: entry.get(k) for k in INSTANT_SETTINGS if k not in INSTANT_LATENT_REG and k not in flat})
    raw.update({k: deconv.get(flat[k]) for k in flat})
    values: dict[str, float | int] = {}
    for key, value in raw.items():
        if value is None:
            continue
        try:
            number = INSTANT_SETTINGS[key](value)
        except (TypeError, ValueError):
            raise RunnerError(f"{SIDECAR_NAME}: 'instant' holds a non-numeric setting: {key}={value!r}") from None
        if not math.isfinite(number):
            raise RunnerError(f"{SIDECAR_NAME}: 'instant' setting {key}={value!r} is not finite")
        values[key] = number
    if values.get("kernel_groups", 1) < 1:
        raise RunnerError(f"{SIDECAR_NAME}: 'instant' setting kernel_groups={values['kernel_groups']} must be at least 1")
    return values


# --- reading an export folder ------------------------------------------------------------------
@dataclass(frozen=True)
class GraphInfo:
    """One graph of the export: ``name`` (a key of :data:`GRAPHS`), ``entry`` (its sidecar dict)."""

    name: str
    entry: dict
    folder: Path

    @property
    def spec(self) -> GraphSpec:
        return GRAPHS[self.name]

    def file(self, suffix: str) -> Path:
        """Path of the graph's file with ``suffix`` (``.onnx`` or ``.engine``): the sidecar's
        ``file`` / ``engine``, else the schema's names."""
        onnx_name = str(self.entry.get("file") or self.spec.file)
        if suffix == ONNX_SUFFIX:
            return self.folder / onnx_name
        return self.folder / str(self.entry.get("engine") or Path(onnx_name).stem + suffix)

    @property
    def inputs(self) -> dict:
        return dict(self.entry.get("inputs") or {})

    @property
    def outputs(self) -> dict:
        return dict(self.entry.get("outputs") or {})

    @property
    def test_input(self) -> Path | None:
        name = self.entry.get("test_input")
        return self.folder / str(name) if name else None

    @property
    def multiple_of(self) -> int:
        value = self.entry.get("multiple_of", DEFAULT_MULTIPLE_OF)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise RunnerError(f"{SIDECAR_NAME}: graphs.{self.name}.multiple_of is not an integer: {value!r}") from None
        if value < 1:
            raise RunnerError(f"{SIDECAR_NAME}: graphs.{self.name}.multiple_of must be >= 1, got {value}")
        return value

    def resolve_names(self, kind: str, actual: list[str]) -> list[str]:
        """Tensor names for the roles of this graph (``kind`` = inputs/outputs) among the model's
        ``actual`` names: each role's first name found wins; if a role is not found by name the
        tensors are taken in the schema's order (a renamed tensor still works)."""
        roles = getattr(self.spec, kind)
        found = [next((a for a in aliases if a in actual), None) for aliases in roles]
        if all(found):
            return found  # type: ignore[return-value]
        if len(actual) < len(roles):
            expected = [aliases[0] for aliases in roles]
            raise RunnerError(f"{self.name}: graph has {kind} {actual}, expected {expected}; is this an edgedp export?")
        return list(actual[: len(roles)])


@dataclass(frozen=True)
class ExportInfo:
    """The validated sidecar of an export folder."""

    folder: Path
    data: dict
    graphs: dict = field(default_factory=dict)

    @property
    def height(self) -> int | None:
        return _opt_int(self.data.get("height"))

    @property
    def width(self) -> int | None:
        return _opt_int(self.data.get("width"))

    @property
    def layers(self) -> int | None:
        return _opt_int(self.data.get("layers"))

    @property
    def radii(self) -> list[float]:
        radii = self.data.get("radii") or []
        try:
            return [float(r) for r in radii]
        except (TypeError, ValueError):
            raise RunnerError(f"{SIDECAR_NAME}: 'radii' must be a list of numbers") from None

    @property
    def scene_id(self) -> str:
        return str(self.data.get("scene_id", "?"))

    @property
    def source(self) -> str:
        return str(self.data.get("source", "scene"))

    def graph(self, name: str) -> GraphInfo:
        """The graph ``name``; a one-line error if the export does not contain it."""
        if name not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise RunnerError(
                f"{self.folder / SIDECAR_NAME}: this export has no '{name}' graph (graphs: {have}); re-export with it"
            )
        return self.graphs[name]


#: Sidecar subtrees that are reports, not settings: a failed verification may record NaN errors.
REPORT_KEYS = ("verification", "verification_fp16")
#: Whole-number fields and their smallest value, at the top level and in every graph entry.
POSITIVE_INTS = {"height": 1, "width": 1, "layers": 1, "kernel_size": 1, "opset": 1, "multiple_of": 1,
                 "input_scale": 1, "format_version": 1}


def _numbers(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in REPORT_KEYS:
                yield from _numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, value


def _check_radii(radii: Any, where: str, layers: Any, kernel_size: Any, path: Path) -> None:
    if not isinstance(radii, list) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in radii):
        raise RunnerError(f"{path}: field '{where}' must be a list of numbers")
    if isinstance(layers, int) and radii and len(radii) != layers:
        raise RunnerError(f"{path}: field '{where}' has {len(radii)} radii for {layers} layers")
    if any(b <= a for a, b in zip(radii, radii[1:])):
        raise RunnerError(f"{path}: field '{where}' must increase (layers ordered by signed blur radius)")
    if isinstance(kernel_size, int) and any(abs(r) > kernel_size / 2 for r in radii):
        raise RunnerError(f"{path}: field '{where}' holds a radius beyond the {kernel_size}x{kernel_size} kernels "
                          f"(|r| <= {kernel_size // 2})")


def check_sidecar(data: dict, path: Path) -> None:
    """Every number of a sidecar finite and in range (issue 17): a NaN radius made ``refocus
    --sweep`` write ``..._fnan_...`` files and ``edgedp verify`` pass.  One-line
    :class:`RunnerError` naming the field; the verification reports are not checked (a failed
    check may record NaN)."""
    for where, value in _numbers(data, ""):
        if not math.isfinite(value):
            raise RunnerError(f"{path}: field '{where}' is {value!r}: every number of the sidecar must be finite")
    entries = [("", data)] + [(f"graphs.{name}.", entry) for name, entry in (data.get("graphs") or {}).items()
                              if isinstance(entry, dict)]
    for prefix, entry in entries:
        for key, least in POSITIVE_INTS.items():
            if key in entry and entry[key] is not None:
                value = entry[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise RunnerError(f"{path}: field '{prefix}{key}' is {value!r}: must be a whole number >= {least}")
        if entry.get("radii") is not None:
            _check_radii(entry["radii"], f"{prefix}radii", entry.get("layers"), data.get("kernel_size"), path)
    kernel_size = data.get("kernel_size")
    if isinstance(kernel_size, int) and kernel_size % 2 == 0:
        raise RunnerError(f"{path}: field 'kernel_size' is {kernel_size}: kernels have an odd size")
    if isinstance(data.get("instant"), dict):
        read_instant_settings(data["instant"])


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def load_export(folder: str | Path) -> ExportInfo:
    """Read and validate ``folder/export.json`` (:func:`check_sidecar`: every number finite and in
    range); one-line :class:`RunnerError` on any problem."""
    folder = Path(folder)
    recover(folder)  # an export killed between its two renames: the old complete folder is back
    if not folder.exists():
        raise RunnerError(f"{folder}: export folder not found")
    if not folder.is_dir():
        raise RunnerError(f"{folder}: not a folder (pass the folder written by 'edgedp export')")
    path = folder / SIDECAR_NAME
    if not path.is_file():
        raise RunnerError(f"{path}: sidecar not found (is {folder} an 'edgedp export' folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RunnerError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise RunnerError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise RunnerError(f"{path}: expected a JSON object at the top level")
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise RunnerError(f"{path}: format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise RunnerError(
            f"{path}: format_version {version!r} is not supported by this runtime (supported: {supported}); "
            f"install the edgedp-runtime of the same edgedp version"
        )
    graphs_raw = data.get("graphs")
    if not isinstance(graphs_raw, dict):
        raise RunnerError(f"{path}: 'graphs' must be an object")
    graphs = {}
    for name, entry in graphs_raw.items():
        if name not in GRAPHS or entry is None:
            continue  # unknown graphs from a newer exporter are ignored
        if not isinstance(entry, dict):
            raise RunnerError(f"{path}: graphs.{name} must be an object")
        graphs[name] = GraphInfo(name=name, entry=entry, folder=folder)
    check_sidecar(data, path)
    return ExportInfo(folder=folder, data=data, graphs=graphs)


def graph_file(graph: GraphInfo, suffix: str, hint: str) -> Path:
    """The graph's file, which must exist (``hint`` says how to make it)."""
    path = graph.file(suffix)
    if not path.is_file():
        raise RunnerError(f"{path}: {graph.name} {suffix[1:]} file not found; {hint}")
    data = graph.entry.get(EXTERNAL_DATA_KEY)
    if suffix == ONNX_SUFFIX and data and not (path.parent / str(data)).is_file():
        raise RunnerError(f"{path.parent / str(data)}: {graph.name}'s external data file not found "
                          f"(it must lie beside {path.name}); {hint}")
    return path
