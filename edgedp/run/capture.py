"""Fit one DP capture end to end, as ``edgedp fit`` does: the library function behind the command.

:func:`fit_capture` reads the pair (input options, ``--camera`` preset, colour transfer), merges
a device profile, builds the :class:`~edgedp.fit.config.FitConfig` from the preset and flags, runs
:func:`edgedp.fit.pipeline.fit_scene` with an optional progress callback, and writes the outputs
(:data:`FIT_OUTPUTS`) and ``report.json``.  ``edgedp fit`` and every capture of ``edgedp batch``
(local processes or Ray tasks) call it, so their results are the same.

The flag -> FitConfig mapping (presets, parsing of ``--iterations`` and friends) is
:mod:`edgedp.fit.options`, the one place those numbers live; a device profile merges into it with
:meth:`edgedp.formats.profile.DeviceProfile.apply_to`.

Outputs (``OUTDIR``): ``allinfocus.png`` (16-bit, on the normalized input's scale: linear for
linear input, sRGB-encoded with an ``sRGB`` chunk when the input was read as sRGB),
``defocus.npy`` (float32 signed blur radius, px), ``defocus.png`` (colour map with legend),
``preview.png`` (input | all-in-focus | defocus), ``scene/`` (the bundle, always linear) and
``report.json`` (settings, per-stage time and losses, peak memory, what was read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..errors import InputError, OutputError

#: What a fit writes into OUTDIR (the bundle is the folder ``scene/``).
FIT_OUTPUTS = ("allinfocus.png", "defocus.npy", "defocus.png", "preview.png", "scene", "report.json")
#: The files that must all exist for a fit's outputs to be complete (``scene/`` as its two files).
COMPLETE_FILES = tuple(
    name for name in FIT_OUTPUTS if name != "scene"
) + ("scene/scene.npz", "scene/scene.json")


@dataclass(frozen=True)
class CaptureOptions:
    """The options of ``edgedp fit`` as values (the same for every capture of ``edgedp batch``).

    ``None`` means "not given": the preset's value, the camera preset's, the profile's or one
    derived from the data, exactly as for the flags of the same names (``edgedp fit --help``).
    A new fit option (e.g. a memory budget) is one more field here, passed through by
    ``edgedp batch`` unchanged.

    Attributes:
        preset: ``fast``, ``default`` or ``best``.
        iterations, layers, max_kernel, max_radius, patches, focus, kernel, device, seed,
            warm_start, channel, profile: as the ``edgedp fit`` flags.
        black_level, white_level, flat_field, crop: input options (``flat_field`` two paths).
        transfer: ``linear``, ``srgb`` or ``auto`` (None: the camera preset's, else ``auto``).
        camera: a :mod:`edgedp.io.cameras` preset name filling the input options not given.
        max_memory: the memory budget in GiB (``--max-memory``); None: what the machine has free,
            capped (:func:`edgedp_runtime.memory.default_budget`).  A frame whose whole-frame fit
            would not fit is fitted tile by tile (:func:`edgedp.fit.tiling.fit_within_budget`).
        kernels: ``--kernels LEFT.npy RIGHT.npy``: a kernel field over the ``patches`` grid
            (:func:`edgedp.formats.kernel_grid.load_kernel_grid`) instead of the parametric kernels;
            None: the profile's field if it has one, else the parametric kernels.
        overwrite: replace existing outputs.
    """

    preset: str = "default"
    iterations: str | None = None
    layers: int | None = None
    max_kernel: int | None = None
    max_radius: float | None = None
    patches: str | None = None
    focus: str | None = None
    kernel: str | None = None
    device: str = "cpu"
    seed: int | None = None
    warm_start: Path | None = None
    channel: str = "luminance"
    profile: Path | None = None
    black_level: float | None = None
    white_level: float | None = None
    flat_field: tuple[Path, Path] | None = None
    crop: str | None = None
    transfer: str | None = None
    camera: str | None = None
    max_memory: float | None = None
    kernels: tuple[Path, Path] | None = None
    overwrite: bool = False

    def settings(self) -> dict[str, Any]:
        """JSON-ready dict of the options (report.json, the batch manifest)."""
        from ..io.writers import json_ready

        return json_ready(dataclasses.asdict(self))


@dataclass
class CaptureFit:
    """What :func:`fit_capture` did: ``report`` is report.json's content (plain JSON types);
    ``result`` the :class:`~edgedp.fit.config.FitResult`; ``warnings`` one-line input warnings;
    ``requested`` the FitConfig before data-derived fields were filled in."""

    report: dict
    result: Any
    requested: Any
    warnings: list[str]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started or since :func:`reset_peak_rss`:
    ``VmHWM`` of ``/proc/self/status`` on Linux, else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement in this process (Linux: ``5`` to ``/proc/self/clear_refs``
    resets ``VmHWM`` to the current RSS), so a worker process that fits several captures reports
    each one's own peak.  False where the system does not allow it (the peak then spans the
    process's lifetime)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def input_info(pair, options, fit_channel: str | int) -> dict:
    """What a fit read, for report.json and the bundle's ``input``."""
    info = pair.info
    return {
        "left": str(info.left_path),
        "right": str(info.right_path),
        "kind": info.kind,
        "bit_depth": info.bit_depth,
        "channels": info.channels,
        "original_size_hw": list(info.original_size),
        "size_hw": list(info.size),
        "crop_hw": list(options.crop) if options.crop else None,
        "crop_offset_yx": list(info.crop_offset),
        "black_level": info.black_level,
        "white_level": info.white_level,
        "flat_field": [str(p) for p in info.flat_field] if info.flat_field else None,
        "flat_gain_range": list(info.flat_gain_range) if info.flat_gain_range else None,
        "raw_min": list(info.raw_min),
        "raw_max": list(info.raw_max),
        "warnings": list(info.warnings),
        "fit_channel": ("luminance" if info.channels == 3 else "single") if fit_channel == "luminance" else fit_channel,
        "transfer": {"requested": info.transfer_requested, "used": info.transfer, "reason": info.transfer_reason},
    }


def transfer_line(entry: dict) -> str:
    """``transfer srgb (auto: 8-bit file)``: the one line saying which transfer a read used,
    from an ``{"requested", "used", "reason"}`` entry (:func:`input_info`'s ``transfer``)."""
    how = "auto" if entry["requested"] == "auto" else "as requested"
    return f"transfer {entry['used']} ({how}: {entry['reason']})"


def _warm_start_message(err: InputError, path: Path) -> InputError:
    text = str(err)
    if text.startswith("warm start"):
        return InputError(f"--warm-start {path}: {text[len('warm start'):].strip()}")
    return err


def parse_max_memory(text: str | float | None) -> float | None:
    """``--max-memory`` as a number of GiB (None: the default budget); InputError (one line) for a
    value that is not a number.  The budget itself (finite, the minimum, the machine's memory) is
    built once, by :func:`memory_budget_of`.

    >>> parse_max_memory("1.5"), parse_max_memory(None)
    (1.5, None)
    """
    if text is None:
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InputError(f"--max-memory {text!r}: expected a number of GiB, e.g. 6") from None


def memory_budget_of(gib: float | None):
    """The :class:`edgedp_runtime.memory.MemoryBudget` of ``gib`` GiB (None: the default, from the
    memory the machine has free); a bad value is a one-line InputError naming ``--max-memory``."""
    from edgedp_runtime.memory import memory_budget

    try:
        return memory_budget(gib)
    except ValueError as err:
        raise InputError(str(err)) from None


def capture_budget(options: CaptureOptions):
    """The memory budget of one fit with ``options`` (:func:`memory_budget_of` its ``max_memory``)."""
    return memory_budget_of(options.max_memory)


class CapturePlan(NamedTuple):
    """What a fit's options resolve to before any image is read (:func:`capture_config`)."""

    config: Any  # FitConfig
    device_profile: Any  # DeviceProfile or None
    read: Any  # ReadOptions
    budget: Any  # edgedp_runtime.memory.MemoryBudget, built once per fit


def capture_config(options: CaptureOptions) -> CapturePlan:
    """The :class:`CapturePlan` (FitConfig, device profile or None, ReadOptions, memory budget) of
    ``options`` without reading any image: validates every option (a one-line InputError naming the flag), so ``edgedp batch``
    refuses bad options before its first capture.  The input options are resolved as flags >
    ``--camera`` preset > the profile's input settings."""
    from ..io.cameras import apply_camera
    from ..fit.options import check_device, fit_config_from_options, read_options
    from ..io.transfer import check_transfer

    config = fit_config_from_options(
        options.preset,
        iterations=options.iterations,
        layers=options.layers,
        max_kernel=options.max_kernel,
        max_radius=options.max_radius,
        patches=options.patches,
        focus=options.focus,
        kernel=options.kernel,
        device=options.device,
        seed=options.seed,
    )
    check_device(config.device)
    budget = capture_budget(options)
    if options.transfer is not None:
        check_transfer(options.transfer)
    chosen = apply_camera(options.camera, black_level=options.black_level, white_level=options.white_level,
                          transfer=options.transfer)
    chosen["flat_field"] = tuple(Path(p) for p in options.flat_field) if options.flat_field else None
    device_profile = None
    if options.profile is not None:
        from ..formats.profile import load_profile

        device_profile = load_profile(options.profile)
        given = {name for name in ("kernel", "focus", "layers", "iterations", "warm_start")
                 if getattr(options, name) is not None}
        config = device_profile.apply_to(config, given, preset=options.preset)
        chosen.update(device_profile.fill_input(chosen["black_level"], chosen["white_level"], chosen["flat_field"]))
    read = read_options(chosen["black_level"], chosen["white_level"], chosen["flat_field"], options.crop,
                        transfer=chosen["transfer"])
    if options.kernels is not None:  # read now: a bad file is refused before any image is read
        capture_kernel_field(options, config, device_profile)
    return CapturePlan(config, device_profile, read, budget)


def capture_kernel_field(options: CaptureOptions, config, device_profile=None):
    """The kernel field a fit of ``options`` uses: ``--kernels`` (read over ``config.patches``,
    source ``calibration``), else a profile's given field (``tune --kernels``), else None (the
    capture's own estimate, with a tuned profile's evidence as its prior: :func:`capture_field_prior`;
    or the parametric kernels).
    A field with stage 3 iterations is a one-line InputError (the fit would refuse it later)."""
    field = None
    if options.kernels is not None:
        from ..formats.kernel_grid import load_kernel_grid

        field = load_kernel_grid(options.kernels[0], options.kernels[1], tuple(config.patches))
    elif device_profile is not None and device_profile.field_evidence is None:
        field = device_profile.kernel_field  # a given field (tune --kernels); a tuned one is a prior instead
    if field is not None and config.stage3_iterations > 0:
        raise InputError("a kernel field (--kernels or the profile's) replaces stage 3's learned kernels: "
                         "give --iterations N,0 or leave the field out")
    return field


def capture_field_prior(options: CaptureOptions, device_profile=None):
    """The kernel-field evidence a fit's estimate starts from: a tuned profile's pooled evidence,
    unless ``--kernels`` gives the field (None otherwise)."""
    if options.kernels is not None or device_profile is None:
        return None
    return device_profile.field_evidence


def kernels_line(field_entry: dict | None, from_profile: bool, model: str) -> str:
    """``field 6x8 from calibration (recentred)`` or ``butterworth (parametric, mirror-symmetric)``:
    which kernels a fit used, from :func:`edgedp.fit.pipeline.field_summary`'s entry."""
    if field_entry is None:
        return f"{model} (parametric, mirror-symmetric)"
    pr, pc = field_entry["grid"]
    if field_entry["source"] == "estimated":
        return f"field {pr}x{pc} estimated from this DP pair (pupil tilt per cell" + (", the profile's as prior)" if from_profile else ")")
    where = "profile's field" if from_profile else "field"
    return f"{where} {pr}x{pc} from {field_entry['source']} (recentred)"


def fit_capture(
    left: Path | str,
    right: Path | str,
    out: Path | str,
    options: CaptureOptions = CaptureOptions(),
    *,
    progress: Callable[[str, int, int, float | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
    write_to: Path | str | None = None,
) -> CaptureFit:
    """Fit one DP capture and write its outputs, exactly as ``edgedp fit`` does.

    Args:
        left, right: the two views.
        out: the output folder (created if needed; existing outputs are refused unless
            ``options.overwrite``) — what report.json records.
        options: the fit's options (:class:`CaptureOptions`).
        progress: :data:`edgedp.fit.config.ProgressCallback` for the stages.
        warn: called once per input warning (one line each), right after reading.
        write_to: write the files here instead of ``out`` (``edgedp batch`` writes into a
            temporary folder and renames it to ``out`` when complete); report.json still says
            ``out``.

    Returns:
        :class:`CaptureFit`.

    Raises:
        InputError, OutputError: one line, for every user-caused problem; outputs are refused
            before the fit starts, not after it.
    """
    started = time.perf_counter()
    left, right, out = Path(left), Path(right), Path(out)
    plan = capture_config(options)
    kernel_field = capture_kernel_field(options, plan.config, plan.device_profile)
    folder = refuse_existing_outputs(out, write_to, options.overwrite)  # before the (long) fit, not after it
    pair, config, fit_channel, gd_init = _read_capture(left, right, plan, options, warn)
    read_seconds = time.perf_counter() - started
    t_fit = time.perf_counter()
    result, notes = _fit(pair, config, plan, options, gd_init, kernel_field, progress, warn)
    fit_seconds = time.perf_counter() - t_fit
    t_write = time.perf_counter()
    report = _write_capture(result, pair, input_info(pair, plan.read, fit_channel), config, options, plan.device_profile,
                            left, right, out, folder, write_to, started, read_seconds, fit_seconds, t_write)
    from ..io.writers import json_ready

    return CaptureFit(report=json_ready(report), result=result, requested=config,
                      warnings=list(pair.info.warnings) + notes)


def refuse_existing_outputs(out: Path, write_to: Path | str | None, overwrite: bool) -> Path:
    """The folder a fit writes into (``write_to`` or ``out``, created; a killed fit's old ``out``
    recovered first); an OutputError when a fit output is there and not ``overwrite``."""
    from ..io.atomic import recover_output
    from ..io.writers import prepare_output_dir

    if write_to is None:
        recover_output(out)  # a fit killed between its two renames: the old OUTDIR is back first
    folder = prepare_output_dir(out if write_to is None else Path(write_to))
    if not overwrite:
        for name in FIT_OUTPUTS:
            path = folder / name
            existing = (path / "scene.npz", path / "scene.json") if name == "scene" else (path,)
            for p in existing:
                if p.exists():
                    raise OutputError(f"{out / p.relative_to(folder)} exists (use --overwrite)")
    return folder


def _read_capture(left: Path, right: Path, plan: "CapturePlan", options: CaptureOptions, warn):
    """Read the pair as the plan says (the profile's view gain applied): ``(pair, config with the
    fit channel, the channel, G_D's warm start or None)``."""
    import math

    from ..fit.options import MIN_FIT_SIZE, parse_channel
    from ..formats.bundle import read_gd_state
    from ..io.images import read_dp_pair

    config, device_profile = plan.config, plan.device_profile
    min_size = MIN_FIT_SIZE
    if config.max_radius is not None:
        min_size = max(min_size, 2 * math.ceil(config.max_radius) + 1)
    read = dataclasses.replace(plan.read, min_size=min_size)
    pair = read_dp_pair(left, right, read)
    for message in pair.info.warnings:
        if warn is not None:
            warn(message)
    fit_channel = parse_channel(options.channel, pair.left.shape[0])
    if fit_channel != "luminance":
        config = dataclasses.replace(config, channel=fit_channel)
    gd_init = read_gd_state(options.warm_start) if options.warm_start is not None else None
    if device_profile is not None:
        from ..formats.profile import check_compatible

        height, width = pair.left.shape[-2:]
        check_compatible(device_profile, height=int(height), width=int(width),
                         layers=config.layers if options.warm_start is None else None)
        if gd_init is None:
            gd_init = device_profile.gd_state
        gain = device_profile.view_gain_for(plan.read.flat_field, int(height), int(width))
        if gain is not None:
            pair.right = pair.right * gain
    return pair, config, fit_channel, gd_init


def _fit(pair, config, plan: "CapturePlan", options: CaptureOptions, gd_init, kernel_field, progress, warn):
    """The fit within the plan's memory budget: ``(FitResult, the notes it gave)``."""
    from ..fit.tiling import TilingConfig, fit_within_budget

    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if warn is not None:
            warn(message)

    try:
        result = fit_within_budget(pair.left, pair.right, config, TilingConfig(), budget=plan.budget, gd_init=gd_init,
                                   kernel_field=kernel_field, field_prior=capture_field_prior(options, plan.device_profile),
                                   progress=progress, warn=note)
    except InputError as err:
        raise (_warm_start_message(err, options.warm_start) if options.warm_start is not None else err) from None
    return result, notes


def _write_capture(result, pair, info, config, options, device_profile, left, right, out, folder, write_to, started,
                   read_seconds, fit_seconds, t_write) -> dict:
    """Write every output all or nothing and return report.json's content."""
    from ..io.atomic import folder_writer

    # All or nothing (issue 17): `edgedp fit` writes every output into a staging folder beside
    # OUTDIR and swaps it in by two renames (the user's other files in OUTDIR carried over), so a
    # kill or a full disk leaves the old outputs complete; `edgedp batch` passes its own staging
    # folder (write_to) and renames it itself.
    writer = folder_writer(out, keep=lambda name: name not in FIT_OUTPUTS) if write_to is None else contextlib.nullcontext(folder)
    staging = folder
    try:
        with writer as staging:
            targets = {name: staging / name for name in FIT_OUTPUTS}
            return _write_outputs(result, pair, info, targets, config, options, left, right, out, started,
                                  read_seconds, fit_seconds, t_write, device_profile)
    except OutputError as err:  # name OUTDIR, not the staging folder that is gone
        raise OutputError(str(err).replace(str(staging), str(out))) from None


def _write_outputs(result, pair, info, targets, config, options, left, right, out, started, read_seconds, fit_seconds,
                   t_write, device_profile=None) -> dict:
    """Write every output of a fit (:data:`FIT_OUTPUTS`) into ``targets`` (a fresh folder) and
    return report.json's content."""
    from datetime import datetime, timezone

    import numpy as np
    import torch

    from ..formats.bundle import save_bundle, versions
    from ..io.writers import prepare_output_dir, write_json, write_npy, write_png8, write_png16
    from ..visualize import defocus_figure, preview_image

    blurry = (pair.left + pair.right) / 2  # the protocol's input baseline
    write_png16(targets["allinfocus.png"], result.allinfocus, overwrite=True, transfer=pair.info.transfer)
    write_npy(targets["defocus.npy"], result.defocus.detach().cpu().numpy().astype(np.float32), overwrite=True)
    # Colours span the layers' radii, so a colour means the same radius in every fit of that
    # range, and a `both` fit always gets the diverging map.
    span = {"vmin": float(result.radii.min()), "vmax": float(result.radii.max())}
    if not span["vmax"] > span["vmin"]:
        span = {}
    write_png8(targets["defocus.png"], defocus_figure(result.defocus, **span), overwrite=True)
    write_png8(targets["preview.png"], preview_image(blurry, result.allinfocus, result.defocus, **span), overwrite=True)
    prepare_output_dir(targets["scene"])
    save_bundle(result, targets["scene"], input_info=info, overwrite=True)
    write_seconds = time.perf_counter() - t_write

    total_seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    radii = result.radii.detach().cpu()
    report = {
        "command": "fit",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": {"left": str(left), "right": str(right), "out": str(out), **options.settings(),
                     "torch_threads": torch.get_num_threads()},
        "config_requested": config,
        "config": result.config,
        "focus": {"requested": config.focus, "decided": result.focus},
        "layers": {"count": int(radii.numel()), "radii_px": radii.tolist(), "kernel_size": int(result.kernels.shape[-1])},
        "disparity": result.disparity,
        "kernel_field": None if result.kernel_field is None else {
            **result.kernel_field,
            "from": "--kernels" if options.kernels is not None else "estimated" if result.kernel_field.get("source") == "estimated" else "profile"},
        "stages": result.stages,
        "seconds": {"read": read_seconds, "fit": fit_seconds, "write": write_seconds, "total": total_seconds},
        "peak_rss_bytes": peak,
        "peak_rss_mib": peak / 2**20,
        "memory": result.tiling,
        "input": info,
        "outputs": {name: name + ("/" if name == "scene" else "") for name in FIT_OUTPUTS},
    }
    write_json(targets["report.json"], report, overwrite=True)
    return report


def outputs_complete(folder: Path | str, left: Path | str | None = None, right: Path | str | None = None) -> bool:
    """True when ``folder`` holds every file of a fit (:data:`COMPLETE_FILES`) and its
    report.json reads, and (when given) was made from these views."""
    import json

    folder = Path(folder)
    if not all((folder / name).is_file() for name in COMPLETE_FILES):
        return False
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        settings = report["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if left is not None and os.path.abspath(settings.get("left", "")) != os.path.abspath(left):
        return False
    if right is not None and os.path.abspath(settings.get("right", "")) != os.path.abspath(right):
        return False
    return True
