"""The ``edgedp`` command line (Typer).

Every command turns user errors (:class:`edgedp.errors.EdgedpError`) into one line on stderr,
``error: ...``, and exit status 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

from . import __version__
from .conventions import AUTO, BEHIND, BOTH, fit_focus, side_text
from .errors import EdgedpError, InputError, OutputError
from .options import (  # noqa: F401  (the library's option rules; kept importable from here)
    MIN_FIT_SIZE,
    WARM_STAGE2_ITERATIONS,
    camera_read_options,
    check_device,
    fit_config_from_options,
    parse_channel,
    parse_iterations,
    parse_patches,
    preset_config,
    presets,
    read_options,
    warm_iterations,
)

app = typer.Typer(
    name="edgedp",
    help="Zero-shot dual-pixel defocus deblurring: fit a DP pair, export to ONNX / TensorRT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Run a command; an EdgedpError becomes ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgedpError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgedp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """edgedp: zero-shot dual-pixel defocus deblurring for edge devices."""


# Input options shared by every command that reads a DP pair.
LeftArg = Annotated[Path, typer.Argument(help="Left DP view (PNG/TIFF/JPEG/.npy/.npz).", show_default=False)]
RightArg = Annotated[Path, typer.Argument(help="Right DP view.", show_default=False)]
BlackLevelOpt = Annotated[
    Optional[float],
    typer.Option("--black-level", help="Raw sensor black level (e.g. 1024 on Pixel 4). Enables raw mode: 16-bit input required."),
]
WhiteLevelOpt = Annotated[
    Optional[float],
    typer.Option("--white-level", help="Raw divisor after black subtraction: v = (raw - black) / white (Pixel 4: 16383)."),
]
FlatFieldOpt = Annotated[
    Optional[tuple[Path, Path]],
    typer.Option("--flat-field", help="Flat-field (white sheet) frames, LEFT then RIGHT, for vignetting correction."),
]
CropOpt = Annotated[Optional[str], typer.Option("--crop", help="Centred crop HxW, e.g. 1008x1344.")]
TransferOpt = Annotated[
    Optional[str],
    typer.Option(
        "--transfer",
        help="Colour transfer of the files: linear, srgb (decode IEC 61966-2-1 to linear light before fitting, "
        "encode the image outputs back) or auto (default: srgb for 8-bit files and PNG/TIFF files that declare "
        "sRGB or an ICC profile, linear for raw mode and untagged 16-bit/float files).",
        show_default=False,
    ),
]
CameraOpt = Annotated[
    Optional[str],
    typer.Option(
        "--camera",
        help="Input preset of a known device (pixel4: black 1024, white 16383; pdcapture: Google's dual-pixel "
        "capture app .pgm files). Explicit --black-level/--white-level/--transfer win.",
        show_default=False,
    ),
]


def echo_warnings(messages, prefix: str = "") -> None:
    """Each message once, as one ``warning: ...`` line on stderr."""
    for message in dict.fromkeys(messages):
        typer.echo(f"warning: {prefix}{message}", err=True)


@app.command()
@user_errors
def info(
    left: LeftArg,
    right: RightArg,
    black_level: BlackLevelOpt = None,
    white_level: WhiteLevelOpt = None,
    flat_field: FlatFieldOpt = None,
    crop: CropOpt = None,
    transfer: TransferOpt = None,
    camera: CameraOpt = None,
    max_disparity: Annotated[int, typer.Option(help="Largest |disparity| searched (px).")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Describe a DP pair: size, bit depth, colour transfer, value range, DP disparity range,
    side of focus.

    The disparity (x_right - x_left, px) is estimated by block matching; positive means the
    blurred content lies behind the focal plane (the thesis' "front focus"). Value ranges are
    after normalization and, for sRGB files, decoding to linear light. Warnings go to stderr.

    Examples:

      edgedp info left.png right.png

      edgedp info 001_left.png 001_right.png --black-level 1024 --white-level 16383 --crop 1008x1344

      edgedp info 20200101_120000_000_left.pgm 20200101_120000_000_right.pgm --camera pdcapture
    """
    from .disparity import estimate_disparity
    from .io import read_dp_pair

    pair = read_dp_pair(left, right, camera_read_options(camera, black_level, white_level, flat_field, crop, transfer))
    est = estimate_disparity(pair.left.mean(0), pair.right.mean(0), max_disparity=max_disparity)
    c, h, w = pair.left.shape
    report = {
        "left": str(left),
        "right": str(right),
        "size_hw": [h, w],
        "channels": c,
        "kind": pair.info.kind,
        "bit_depth": pair.info.bit_depth,
        "value_range": {
            "left": [float(pair.left.min()), float(pair.left.max())],
            "right": [float(pair.right.min()), float(pair.right.max())],
        },
        "disparity_px": {"low": est.low, "median": est.median, "high": est.high, "tile": est.tile},
        "focus_side": est.side,
        "transfer": {"requested": pair.info.transfer_requested, "used": pair.info.transfer, "reason": pair.info.transfer_reason},
        "camera": camera,
        "black_level": pair.info.black_level,
        "white_level": pair.info.white_level,
        "warnings": list(pair.info.warnings),
    }
    echo_warnings(pair.info.warnings)
    if as_json:
        typer.echo(json.dumps(report))
        return
    from .capture import transfer_line

    vr = report["value_range"]
    typer.echo(f"size          {h} x {w} (H x W), {c} channel(s), {pair.info.kind}, {pair.info.bit_depth}-bit")
    typer.echo(f"transfer      {transfer_line(report['transfer'])[len('transfer '):]}")
    typer.echo(f"value range   left [{vr['left'][0]:.4f}, {vr['left'][1]:.4f}]  right [{vr['right'][0]:.4f}, {vr['right'][1]:.4f}]")
    typer.echo(
        f"disparity     {est.low:+.2f} .. {est.high:+.2f} px (median {est.median:+.2f}; x_right - x_left, 2nd-98th pct of tiles)"
    )
    typer.echo(f"focus side    {side_text(est.side)}")


class FocusChoice(str, Enum):
    """Fit focus of a synthetic scene (:mod:`edgedp.conventions`; ``front``: old name of behind)."""

    behind = "behind"
    both = "both"
    front = "front"


def focus_option(value: Optional[Enum]) -> Optional[str]:
    """A ``--focus`` value in the :mod:`edgedp.conventions` vocabulary; an old name (``front``)
    is mapped with one ``warning:`` line."""
    if value is None:
        return None
    return fit_focus(value.value if isinstance(value, Enum) else value, what="--focus",
                     warn=lambda m: echo_warnings([m]))


class SynthKernel(str, Enum):
    butterworth = "butterworth"
    disk = "disk"


class DepthChoice(str, Enum):
    layered = "layered"
    smooth = "smooth"


SYNTH_FILES = ("left.png", "right.png", "gt_allinfocus.png", "gt_defocus.npy", "scene.json")


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.", show_default=False)],
    seed: Annotated[int, typer.Option(help="Seed of texture, depth and noise.")] = 0,
    focus: Annotated[
        Optional[FocusChoice],
        typer.Option(help="behind: all blur behind the focal plane (r > 0); both: both sides (r of either sign); front: old "
                          "name of behind. Default: behind, or both with --transfer srgb.",
                     show_default=False),
    ] = None,
    kernel: Annotated[SynthKernel, typer.Option(help="Parametric DP kernel model.")] = SynthKernel.butterworth,
    kernel_file: Annotated[
        Optional[Path], typer.Option(help=".npy kernels (2,K,K) [left,right] or (2,Pr,Pc,K,K), for radius (K-1)/2; overrides --kernel.")
    ] = None,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "301x401",
    max_radius: Annotated[float, typer.Option(help="Largest blur radius in the scene (px).")] = 8.0,
    depth: Annotated[DepthChoice, typer.Option(help="layered objects or a smooth depth.")] = DepthChoice.layered,
    spatially_varying: Annotated[bool, typer.Option(help="Kernels vary over the frame.")] = False,
    noise: Annotated[float, typer.Option(help="Read-noise standard deviation ([0,1] scale).")] = 0.002,
    transfer: Annotated[
        str,
        typer.Option(help="linear: 16-bit linear views (raw-like); srgb: 8-bit sRGB views as cameras and DPDD store "
                          "them (focus both by default), ground truth 16-bit sRGB."),
    ] = "linear",
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in OUT.")] = False,
) -> None:
    """Simulate a DP capture with ground truth (the built-in sample and test data).

    The scene is rendered in linear light. With --transfer linear (default) it writes left.png
    and right.png (16-bit, linear), gt_allinfocus.png (16-bit linear); with --transfer srgb,
    DPDD-like pairs: left.png and right.png 8-bit sRGB (IEC 61966-2-1, with an sRGB chunk), the
    ground truth gt_allinfocus.png 16-bit sRGB. Both also write gt_defocus.npy (signed blur
    radius in px, > 0 behind the focal plane) and scene.json (all parameters, the transfer and
    the simulated disparity range).

    Examples:

      edgedp synth -o sample

      edgedp synth -o sample2 --focus both --kernel disk --size 480x640 --seed 3

      edgedp synth -o dpdd_like --transfer srgb
    """
    import numpy as np

    from .io import parse_size, prepare_output_dir, write_json, write_npy, write_png16, write_srgb_png8
    from .synth import SynthConfig, load_kernel_file, make_scene
    from .transfer import SRGB, check_transfer

    transfer = check_transfer(transfer)
    if transfer not in ("linear", SRGB):
        raise InputError(f"--transfer {transfer}: synth writes linear or srgb files")
    focus = focus_option(focus)
    if focus is None:
        focus = BOTH if transfer == SRGB else BEHIND

    user_kernels = load_kernel_file(kernel_file) if kernel_file is not None else None
    try:
        config = SynthConfig(
            size=parse_size(size),
            focus=focus,
            kernel="file" if user_kernels is not None else kernel.value,
            max_radius=max_radius,
            depth=depth.value,
            spatially_varying=spatially_varying,
            noise_std=noise,
            seed=seed,
        )
    except ValueError as err:
        raise InputError(str(err)) from None
    out = prepare_output_dir(out)
    existing = [name for name in SYNTH_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out / existing[0]} exists (use --overwrite)")
    scene = make_scene(config, kernels=user_kernels)
    scene.params["transfer"] = transfer
    if transfer == SRGB:
        scene.params["files"] = {"views": "8-bit sRGB", "gt_allinfocus": "16-bit sRGB"}
        write_srgb_png8(out / "left.png", scene.left, overwrite=overwrite)
        write_srgb_png8(out / "right.png", scene.right, overwrite=overwrite)
    else:
        scene.params["files"] = {"views": "16-bit linear", "gt_allinfocus": "16-bit linear"}
        write_png16(out / "left.png", scene.left, overwrite=overwrite)
        write_png16(out / "right.png", scene.right, overwrite=overwrite)
    write_png16(out / "gt_allinfocus.png", scene.allinfocus, overwrite=overwrite, transfer=transfer)
    write_npy(out / "gt_defocus.npy", scene.defocus.numpy().astype(np.float32), overwrite=overwrite)
    write_json(out / "scene.json", scene.params, overwrite=overwrite)
    lo, hi = scene.params["disparity_percentiles_2_98_px"]
    typer.echo(
        f"wrote {out}: {config.size[0]}x{config.size[1]}, {transfer}, focus {config.focus}, {config.kernel} kernels, "
        f"blur radius {scene.params['defocus_range_px'][0]:+.1f}..{scene.params['defocus_range_px'][1]:+.1f} px, "
        f"disparity {lo:+.2f}..{hi:+.2f} px"
    )


# ---------------------------------------------------------------------------------------------
# fit


class PresetChoice(str, Enum):
    fast = "fast"
    default = "default"
    best = "best"


class FitFocusChoice(str, Enum):
    """``--focus`` of a fit (:mod:`edgedp.conventions`; ``front``: old name of behind)."""

    auto = "auto"
    behind = "behind"
    both = "both"
    front = "front"


class DeviceChoice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class FitProgress:
    """A :data:`edgedp.fit.ProgressCallback` drawing one rich progress bar per stage on stderr.

    When stderr is not a terminal (logs, CI) it prints a plain line at each quarter of a stage.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> "FitProgress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[loss]}"),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, stage: str, step: int, total: int, loss: float | None) -> None:
        text = "" if loss is None else f"loss {_short(loss)}"
        if self.progress is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1), loss=text)
            self.progress.update(self.tasks[stage], completed=step, total=max(total, 1), loss=text)
            return
        quarter = (4 * step) // max(total, 1)
        if quarter > self.printed.get(stage, 0):
            self.printed[stage] = quarter
            typer.echo(f"{stage}: {step}/{total} it{', ' + text if text else ''}", err=True)


def _short(value: float | None) -> str:
    """1.23e-4 style (no zero-padded exponent)."""
    if value is None:
        return "-"
    mantissa, _, exponent = f"{value:.2e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def memory_line(memory: dict | None) -> str:
    """``budget 6.00 GiB (--max-memory 6); tiled: 12 tiles (3x4), cores 1024 px, margin 152 px``
    from report.json's ``memory`` (:meth:`edgedp.tiling.TilePlan.report`)."""
    if not memory:
        return "-"
    budget = memory.get("budget", {})
    head = f"budget {budget.get('gib', float('nan')):.2f} GiB ({budget.get('source', '?')}); "
    if not memory.get("tiled"):
        return head + f"whole frame (estimated {memory.get('estimate_whole_frame_gib', float('nan')):.2f} GiB)"
    rows, cols = memory.get("grid", [0, 0])
    return head + (f"tiled: {memory.get('tiles')} tiles ({rows}x{cols}), cores {memory.get('core_px')} px, margin "
                   f"{memory.get('margin_px')} px, G_D scale {memory.get('gd_scale')}, outputs in {memory.get('store')}")


def stage_line(index: int, stage) -> str:
    """``stage 2  defocus map   300 it   41.2 s   loss 1.23e-4`` for a StageReport."""
    name = str(stage.name)
    words = name.split()
    if len(words) >= 2 and words[0] == "stage" and words[1].isdigit():
        head, rest = f"stage {words[1]}", " ".join(words[2:])
    else:
        head, rest = f"stage {index}", name
    return f"{head}  {rest:<14}{stage.iterations:>6} it {stage.seconds:>8.1f} s   loss {_short(stage.final_loss)}"


# Options of `edgedp fit`, shared with `edgedp batch` (which passes them to every capture).
PresetOpt = Annotated[PresetChoice, typer.Option(help="Speed/quality preset (iterations per stage); flags below override it.")]
IterationsOpt = Annotated[
    Optional[str], typer.Option(help="Optimizer steps per stage: S2 or S2,S3 (stage 3 off with S3 = 0). Default: the preset's.")
]
LayersOpt = Annotated[
    Optional[int], typer.Option(help="Layers per side of focus. Default: one per pixel of blur radius.", show_default=False)
]
MaxKernelOpt = Annotated[
    Optional[int], typer.Option(help="Largest kernel size K (odd); sets the largest blur radius to (K-1)/2.", show_default=False)
]
MaxRadiusOpt = Annotated[
    Optional[float],
    typer.Option(help="Largest blur radius in px. Default: from the DP disparity of the pair.", show_default=False),
]
PatchesOpt = Annotated[Optional[str], typer.Option(help="Stage 3 kernel grid RxC (default 6x8).", show_default=False)]
FitFocusOpt = Annotated[
    Optional[FitFocusChoice],
    typer.Option(help="auto (decide from the DP disparity; default), behind (blur behind the focal plane only, r > 0) or "
                      "both (r of either sign); front: old name of behind.", show_default=False),
]
KernelOpt = Annotated[
    Optional[SynthKernel], typer.Option(help="Parametric DP kernel model (default butterworth).", show_default=False)
]
DeviceOpt = Annotated[DeviceChoice, typer.Option(help="Where the fit runs.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed of every random initialization (default 0).", show_default=False)]
WarmStartOpt = Annotated[
    Optional[Path],
    typer.Option(help="G_D weights to start from: a scene bundle folder (OUTDIR/scene) or its scene.npz, a .npz or .pt state dict.", show_default=False),
]
ChannelOpt = Annotated[
    str,
    typer.Option(
        help="RGB input: the channel the fit runs on, luminance, green (or red/blue) or a number 0..2. "
        "The fit runs on the luminance by default; the fitted defocus map and kernels are then applied to every channel."
    ),
]
MaxMemoryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        help="Memory budget in GiB, e.g. 6 (default: 60% of the memory the machine has free, at most 16 GiB). "
        "A frame too large for it is fitted tile by tile (G_D still sees the whole frame); report.json says how.",
        show_default=False,
    ),
]


def parse_max_memory(text: str | float | None) -> float | None:
    """``--max-memory`` -> GiB (None: the default budget); InputError (one line) for a value
    that is not a number, not finite, below the minimum or above the machine's memory."""
    if text is None:
        return None
    from edgedp_runtime.memory import memory_budget

    try:
        memory_budget(text)
    except ValueError as err:
        raise InputError(str(err)) from None
    return float(text)


ProfileOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Device profile from `edgedp tune`: kernels, layer radii, G_D warm start and input settings "
        "(black/white level, flat field) are taken from it; explicit flags win.",
        show_default=False,
    ),
]


def _fit_options(
    black_level: BlackLevelOpt = None,
    white_level: WhiteLevelOpt = None,
    flat_field: FlatFieldOpt = None,
    crop: CropOpt = None,
    transfer: TransferOpt = None,
    camera: CameraOpt = None,
    preset: PresetOpt = PresetChoice.default,
    iterations: IterationsOpt = None,
    layers: LayersOpt = None,
    max_kernel: MaxKernelOpt = None,
    max_radius: MaxRadiusOpt = None,
    patches: PatchesOpt = None,
    focus: FitFocusOpt = None,
    kernel: KernelOpt = None,
    device: DeviceOpt = DeviceChoice.cpu,
    seed: SeedOpt = None,
    warm_start: WarmStartOpt = None,
    channel: ChannelOpt = "luminance",
    profile: ProfileOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """The options of one fit, declared once: :func:`with_fit_options` gives them to `edgedp fit`
    and `edgedp batch` (each field of :class:`edgedp.capture.CaptureOptions` but ``overwrite``)."""


def with_fit_options(command: F) -> F:
    """Give a Typer command the fit options (:func:`_fit_options`), right after its ``out``
    parameter, and call it with them gathered in ``options`` (a CaptureOptions; enums as their
    values).  A new fit option is one parameter of ``_fit_options`` and one CaptureOptions field."""
    import inspect

    from .capture import CaptureOptions

    shared = list(inspect.signature(_fit_options, eval_str=True).parameters.values())
    names = [p.name for p in shared]
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
    at = next(i for i, p in enumerate(own) if p.name == "out") + 1

    @functools.wraps(command)
    def wrapper(**kwargs):
        values = {name: kwargs.pop(name) for name in names}
        values["focus"] = focus_option(values["focus"])
        values = {k: (v.value if isinstance(v, Enum) else v) for k, v in values.items()}
        if values["flat_field"] is not None and any(p is None for p in values["flat_field"]):
            values["flat_field"] = None
        values["max_memory"] = parse_max_memory(values["max_memory"])
        return command(**kwargs, options=CaptureOptions(**values))

    wrapper.__signature__ = inspect.Signature(own[:at] + shared + own[at:])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
@with_fit_options
def fit(
    left: LeftArg,
    right: RightArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (created if needed).", show_default=False)],
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs in OUT.")] = False,
    *,
    options,
) -> None:
    """Fit a DP pair zero-shot: all-in-focus image, defocus map, scene bundle.

    Writes into OUT: allinfocus.png (16-bit on the normalized input's scale: linear, or
    sRGB-encoded when the input was read as sRGB; RGB for RGB input), defocus.npy (float32 signed
    blur radius in px, > 0 behind the focal plane), defocus.png (colour map with legend),
    preview.png (input | all-in-focus | defocus), scene/ (the fitted scene bundle, linear, see
    edgedp.bundle) and report.json (settings, per-stage time and losses, peak memory). Progress
    and warnings go to stderr, the summary to stdout.

    Examples:

      edgedp fit left.png right.png -o out

      edgedp fit 001_left.png 001_right.png -o out/001 --camera pixel4 --flat-field white_sheet_left.png white_sheet_right.png --crop 1008x1344 --preset fast --overwrite

      edgedp fit left.png right.png -o out --focus both --max-kernel 35 --iterations 500,100 --warm-start other/scene

      edgedp fit camera_left.jpg camera_right.jpg -o out --transfer srgb
    """
    import dataclasses

    from .capture import FIT_OUTPUTS, fit_capture, transfer_line

    options = dataclasses.replace(options, overwrite=overwrite)
    with FitProgress() as progress:
        done = fit_capture(left, right, out, options, progress=progress, warn=lambda m: echo_warnings([m]))
    result, report = done.result, done.report

    for index, stage in enumerate(result.stages, start=1):
        typer.echo(stage_line(index, stage))
    typer.echo(f"input    {transfer_line(report['input']['transfer'])}")
    d = result.disparity or {}
    disparity = f"DP disparity {d.get('low', float('nan')):+.2f} .. {d.get('high', float('nan')):+.2f} px"
    if done.requested.focus == AUTO:
        typer.echo(f"focus    auto -> {result.focus} ({disparity}, {d.get('side', '?')})")
    else:
        typer.echo(f"focus    {result.focus} (as requested; {disparity})")
    radii = result.radii.detach().cpu()
    typer.echo(
        f"layers   {radii.numel()}, blur radius {float(radii.min()):+.1f} .. {float(radii.max()):+.1f} px, "
        f"kernels {result.kernels.shape[-1]}x{result.kernels.shape[-1]}"
    )
    typer.echo(f"memory   {memory_line(report.get('memory'))}")
    typer.echo(
        f"wrote    {out}: {', '.join(n + ('/' if n == 'scene' else '') for n in FIT_OUTPUTS)} "
        f"({report['seconds']['total']:.1f} s, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB)"
    )



# ---------------------------------------------------------------------------------------------
# tune (device profile)

@app.command()
@user_errors
def tune(
    captures: Annotated[
        list[str],
        typer.Argument(help="Captures of one device: LEFT,RIGHT pairs, view files, folders of pairs or .txt lists "
                            "(as for edgedp batch).", show_default=False),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Profile file to write (e.g. PHONE.profile).", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Device name stored in the profile.")] = "device",
    black_level: BlackLevelOpt = None,
    white_level: WhiteLevelOpt = None,
    flat_field: FlatFieldOpt = None,
    crop: CropOpt = None,
    transfer: TransferOpt = None,
    camera: CameraOpt = None,
    preset: Annotated[PresetChoice, typer.Option(help="Speed/quality preset for the G_D fits.")] = PresetChoice.fast,
    iterations: Annotated[Optional[str], typer.Option(help="Stage 2 steps per capture (S2). Default: the preset's.")] = None,
    focus: Annotated[Optional[FitFocusChoice], typer.Option(help="auto (default), behind or both (front: old name of behind).",
                                                            show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Passes of the G_D fit over the captures.")] = 1,
    search: Annotated[
        bool,
        typer.Option(help="Also search the Butterworth kernel shape and radius per disparity (off by default: on real "
                          "captures it is not identifiable from DP pairs alone, see README).")
    ] = False,
    max_memory: MaxMemoryOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing profile.")] = False,
) -> None:
    """Tune a device profile from several DP captures of one phone (no calibration target).

    Learns, from the DP views alone: the left/right gain over the frame (DP vignetting, no
    white sheet needed), one G_D fitted on all captures, and with --search the Butterworth kernel
    shape (order, cut-off, floor beta) and blur radius per disparity that best explain both views
    of every capture; writes them with the input settings into one profile file (see
    edgedp.profile). `edgedp fit --profile` then starts from it, and `edgedp export PHONE.profile`
    makes the instant on-device predictor.

    Examples:

      edgedp tune a_left.png,a_right.png b_left.png,b_right.png -o PHONE.profile --name pixel4

      edgedp tune captures/ -o PHONE.profile --camera pixel4
    """
    import dataclasses

    from .io import find_captures, read_dp_pair
    from .profile import save_profile
    from .tune import tune_device

    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists (use --overwrite)")
    import os

    # Refuse before minutes of tuning, not after them.
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write the profile {out}: folder {folder} does not exist or is not writable")
    focus_option(focus)  # one warning line for an old name (FitConfig maps it)
    if rounds < 1:
        raise InputError(f"--rounds {rounds}: must be >= 1")
    from edgedp_runtime.memory import memory_budget

    budget = memory_budget(parse_max_memory(max_memory))
    config = fit_config_from_options(preset.value, iterations=iterations, focus=focus.value if focus is not None else None)
    config = dataclasses.replace(config, stage3_iterations=0)
    options = camera_read_options(camera, black_level, white_level, flat_field, crop, transfer, min_size=MIN_FIT_SIZE)
    found, notes = find_captures(captures)
    echo_warnings(notes)
    pairs = [(c.left, c.right) for c in found]
    data, messages = [], []
    for left, right in pairs:
        pair = read_dp_pair(left, right, options)
        messages.extend(pair.info.warnings)
        data.append((pair.left, pair.right))
    echo_warnings(messages)  # a condition shared by several captures (8-bit input) once
    memory: dict = {}
    with FitProgress() as progress:
        profile, scores = tune_device(data, config, device_name=name, paths=[f"{l},{r}" for l, r in pairs],
                                      search=search, rounds=rounds, progress=progress, budget=budget, plan_report=memory)
    profile = dataclasses.replace(
        profile,
        black_level=options.black_level,
        white_level=options.white_level,
        flat_field=None if options.flat_field is None else tuple(str(p) for p in options.flat_field),
    )
    save_profile(profile, out, overwrite=overwrite)
    typer.echo(f"{'capture':<40} {'size':>11} {'disparity px':>15} {'G_D s':>7} {'loss':>9}")
    for (left_path, _), c in zip(pairs, profile.captures):
        typer.echo(f"{left_path.name[-40:]:<40} {c.height:>5}x{c.width:<5} {c.disparity_low:+6.2f}..{c.disparity_high:+6.2f} "
                   f"{(c.seconds or 0):7.2f} {_short(c.loss):>9}")
    b = profile.butterworth
    searched = "searched" if search else "default shape; --search to tune it"
    typer.echo(f"kernel   {profile.kernel_model} order {b.order:g} cutoff {b.cutoff:g} beta {b.beta:g}, "
               f"radius scale {profile.radius_scale:g} ({searched})")
    if search:
        for k in scores[:3]:
            typer.echo(f"         order {k.params.order:g} cutoff {k.params.cutoff:g} beta {k.params.beta:g}: score {k.score:.4f}")
    if profile.view_gain is not None:
        from .profile import view_gain_map

        g = view_gain_map(profile.view_gain, profile.height, profile.width)
        typer.echo(f"gain     right view x {float(g.min()):.3f} .. {float(g.max()):.3f} over the frame "
                   f"(centre {profile.asymmetry:.3f}; measured after the flat field given, if any)")
    typer.echo(f"layers   {profile.layers} ({profile.focus}), radius {min(profile.radii):+.1f} .. {max(profile.radii):+.1f} px")
    typer.echo(f"memory   {memory_line(memory)}")
    typer.echo(f"wrote    {out}")


# ---------------------------------------------------------------------------------------------
# batch


@app.command()
@user_errors
@with_fit_options
def batch(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Captures: folders of pairs (*_left/*_right, *_L/*_R, DPDD test_l/source + test_r/source, Google "
                 "left_pd/ + right_pd/ or capture-app .pgm files), LEFT,RIGHT pairs, view files, or .txt files listing them.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Batch folder: OUT/<name>/ per capture, manifest.jsonl, index.html.", show_default=False)] = None,
    jobs: Annotated[int, typer.Option(help="Captures fitted at the same time (local: worker processes).")] = 1,
    threads: Annotated[
        Optional[int],
        typer.Option(help="Torch threads per capture (Ray: num_cpus per task). Default: cores // jobs.", show_default=False),
    ] = None,
    backend: Annotated[str, typer.Option(help="local (this machine) or ray (Ray tasks; needs edgedp[cluster]).")] = "local",
    address: Annotated[
        Optional[str],
        typer.Option(help="Ray cluster address (e.g. ray://head:10001 or head:6379). Default: RAY_ADDRESS, a cluster "
                          "started with `ray start` on this machine, else a local Ray instance.", show_default=False),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip captures whose outputs in OUT are complete; append to the manifest.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Fit every capture again and replace its outputs; start a new manifest.")] = False,
    *,
    options,
) -> None:
    """Fit many DP captures: OUT/<name>/ per capture (the outputs of edgedp fit), OUT/manifest.jsonl
    and OUT/index.html (an offline gallery of the previews).

    The fit options are those of edgedp fit and apply to every capture. A failed capture is
    recorded with its error line and the batch goes on (exit status 1 at the end if any failed).
    Each capture is written into a hidden staging folder and renamed when complete, so a killed
    batch leaves no half-written outputs; run it again with --resume to fit only what is missing.
    --jobs N fits N captures at a time with cores // N torch threads each; --backend ray runs
    the captures as Ray tasks (num_cpus = threads per task, num_gpus = 1 with --device cuda) on
    the cluster at --address, with the same results and manifest.

    Examples:

      edgedp batch captures/ -o out/batch --preset fast

      edgedp batch dd_dp_dataset_png/ -o out/dpdd --transfer srgb --jobs 2 --resume

      edgedp batch list.txt a_left.png,a_right.png -o out/b --camera pixel4 --backend ray --address head:6379
    """
    import time

    from .batch import BatchConfig, run_batch, summary_rows
    from .io import find_captures

    if out is None:
        raise InputError("missing -o/--out: the batch folder to write into")
    if not inputs:
        raise InputError("no captures given: name folders of pairs, LEFT,RIGHT pairs or .txt lists")
    captures, notes = find_captures(inputs)
    echo_warnings(notes)
    config = BatchConfig(out=out, options=options, jobs=jobs, threads=threads, backend=backend.strip().lower(),
                         address=address, resume=resume, overwrite=overwrite)
    progress = BatchProgress(len(captures))
    try:
        with progress:
            result = run_batch(config, captures, on_record=progress)
    except KeyboardInterrupt:
        from .batch import read_manifest

        finished = sum(r["status"] != "failed" for r in read_manifest(out).values())
        typer.echo(f"error: interrupted with {finished} of {len(captures)} captures complete in {out}; "
                   "run the same command with --resume to fit the rest", err=True)
        raise typer.Exit(130) from None
    grouped: dict[str, list[str]] = {}
    for record in result.records:
        for message in record.get("warnings") or []:
            grouped.setdefault(message, []).append(record["name"])
    for message, names in grouped.items():
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        echo_warnings([f"{message} ({shown})" if len(names) > 1 else f"{names[0]}: {message}"])
    for row in summary_rows(result.records):
        typer.echo(row)
    counts = {s: sum(r["status"] == s for r in result.records) for s in ("done", "failed", "skipped")}
    fitted = counts["done"]
    rate = f", {fitted / result.seconds * 60:.2f} captures/min" if fitted and result.seconds > 0 else ""
    typer.echo(
        f"batch    {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in {result.seconds:.1f} s"
        f"{rate} ({config.backend}, {config.jobs} job(s)); wrote {out / 'manifest.jsonl'}, {out / 'index.html'}"
    )
    if counts["failed"]:
        raise typer.Exit(1)


class BatchProgress:
    """One progress bar over a batch's captures on stderr (a plain line per capture when stderr
    is not a terminal)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total
        self.progress = None
        self.task = None

    def __enter__(self) -> "BatchProgress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("batch   "), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.fields[last]}"), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("batch", total=max(self.total, 1), last="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, record: dict, finished: int, total: int) -> None:
        what = f"{record['name']} {record['status']}"
        if self.progress is not None:
            self.progress.update(self.task, completed=finished, last=what)
        else:
            typer.echo(f"batch: {finished}/{total} {what}", err=True)


# ---------------------------------------------------------------------------------------------
# export / verify


class ExportFormatChoice(str, Enum):
    onnx = "onnx"
    engine = "engine"


def _print_verification(results: dict, label: str = "verify") -> bool:
    """One line per graph (worst output), and per output where a graph has several; True if all
    passed.  ``results``: a sidecar's ``verification`` (or ``verification_fp16``) dict."""
    ok = True
    for name, r in results.items():
        if name == "method":
            continue
        passed = bool(r.get("passed"))
        ok &= passed
        tol = f"atol {r['atol']:.0e}" + (f", rtol {r['rtol']:.0e}" if "rtol" in r else "")
        typer.echo(
            f"{label:<8} {name:<8} max abs {r['max_abs']:.2e}  max rel {r['max_rel']:.2e}  ({tol}) "
            f"{'ok' if passed else 'FAILED'}"
        )
        outputs = r.get("outputs") or {}
        if len(outputs) > 1:
            parts = ", ".join(f"{k} {v['max_abs']:.1e}" for k, v in outputs.items())
            typer.echo(f"{'':<8} {'':<8} max abs per output: {parts}")
    return ok


def _polygraphy_hint(out: Path, graphs: dict) -> None:
    import importlib.util

    if importlib.util.find_spec("polygraphy") is None:
        return
    for name, g in graphs.items():
        cmd = f"polygraphy run {out / g['file']} --onnxrt --trt"
        if name == "gd" and g.get("dynamic"):
            m = int(g.get("multiple_of", 8))
            cmd += f" --input-shapes pair:[1,2,{m * 32},{m * 32}]"
        typer.echo(f"device   {cmd}")


def explicit_options(ctx: typer.Context, names: tuple[str, ...]) -> dict:
    """The options among ``names`` that the user set on the command line (not left at their
    defaults), with their values: an option a format ignores is refused, not silently dropped."""
    given = {}
    for name in names:
        source = ctx.get_parameter_source(name)  # click's ParameterSource (typer vendors click)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = ctx.params[name]
    return given


@app.command("export")
@user_errors
def export_cmd(
    ctx: typer.Context,
    scene: Annotated[
        Path,
        typer.Argument(help="Fit output folder (OUTDIR), its scene/ bundle folder, or a device profile file (PHONE.profile).", show_default=False),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (created if needed).", show_default=False)],
    format: Annotated[ExportFormatChoice, typer.Option("--format", help="onnx: ONNX files; engine: ONNX, then TensorRT engines (needs TensorRT and a GPU).")] = ExportFormatChoice.onnx,
    opset: Annotated[int, typer.Option(help="ONNX opset, 13-17 (17: the last TensorRT 8.5 / JetPack 5.1 parses).")] = 17,
    half: Annotated[bool, typer.Option("--half", help="Engines only: allow FP16 kernels (G_D's standardization stays FP32) and record an FP16 verification.")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="gd.onnx with dynamic H and W (multiples of 8 * input_scale) or the source's size.")] = True,
    workspace: Annotated[int, typer.Option(help="Engines only: TensorRT builder workspace limit (MiB).")] = 1024,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Run the graphs in ONNX Runtime (CPU) and compare with PyTorch.")] = True,
    atol: Annotated[float, typer.Option(help="Verification: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Verification of a scene's render/refocus: tolerance relative to the largest reference value.")] = 1e-3,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export in OUT.")] = False,
) -> None:
    """Bake a fitted scene into render.onnx, refocus.onnx and gd.onnx (+ export.json), or a
    device profile into gd.onnx and kernels.npy (+ export.json) for the instant on-device path.

    render.onnx re-renders the DP pair from a latent map (compositing weights and kernels baked
    in); refocus.onnx re-blurs the all-in-focus image for a new focus (signed blur radius, px) and
    aperture scale; gd.onnx is G_D (DP pair in, alphas and defocus out). export.json describes
    them for edgedp-runtime (pip install ./export). A profile export (SCENE is a file) is what
    `edgedp-runtime instant` runs: G_D plus the profile's kernels give a defocus map and an
    all-in-focus image of a new capture without PyTorch. Everything is written to a staging
    folder first; OUT only changes when the whole export succeeded. An option the format or the
    source ignores (--half / --workspace with --format onnx, --rtol for a profile) is refused.
    Verification failures exit with status 1.

    Examples:

      edgedp export out -o out/export

      edgedp export out/scene -o out/export --opset 17 --static --no-verify --overwrite

      edgedp export out -o out/engines --format engine --half --workspace 2048

      edgedp export PHONE.profile -o phone_export
    """
    from .exporter import passed, run_export

    given = explicit_options(ctx, ("opset", "half", "dynamic", "workspace", "verify", "atol", "rtol"))
    side = run_export(scene, out, format.value, given, overwrite=overwrite, log=typer.echo)
    files = [g["file"] for g in side["graphs"].values()] + [g["engine"] for g in side["graphs"].values() if "engine" in g]
    if "instant" in side:
        files.append(side["instant"]["kernels"])
    typer.echo(f"wrote    {out}: {', '.join(files)}, export.json (opset {side['opset']})")
    for note in side.get("notes", []):
        typer.echo(f"note     {note}")
    _print_verification(side.get("verification", {}))
    if "verification_fp16" in side:
        _print_verification(side["verification_fp16"], "fp16")
    _polygraphy_hint(out, side["graphs"])
    if not passed(side):
        typer.echo("error: verification failed (see above)", err=True)
        raise typer.Exit(1)


@app.command("verify")
@user_errors
def verify_cmd(
    ctx: typer.Context,
    export_dir: Annotated[Path, typer.Argument(help="Folder written by edgedp export (with export.json).", show_default=False)],
    scene: Annotated[
        Optional[Path],
        typer.Option(help="Scene bundle (or, for a profile export, the PHONE.profile) to compare with "
                          "(default: the one recorded in export.json).", show_default=False),
    ] = None,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance [default: 1e-4; --half: 1e-3].", show_default=False)] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Scene render/refocus: tolerance relative to the largest reference value [default: 1e-3; --half: 5e-3].", show_default=False)] = None,
    half: Annotated[bool, typer.Option("--half", help="Verify the graphs' FP16 emulation (what an FP16 engine computes) instead.")] = False,
) -> None:
    """Re-run an export's graphs in ONNX Runtime (CPU) and compare with PyTorch.

    Prints max abs / rel error per graph (and per output); exits 1 when one is over the
    tolerances. --half runs each graph with every float tensor rounded to FP16 (edgedp.onnx_tools
    .emulate_fp16) against the same FP32 reference, with the FP16 tolerances.

    Examples:

      edgedp verify out/export

      edgedp verify out/export --scene out/scene --atol 1e-5

      edgedp verify out/export --half
    """
    import math

    from .bundle import load_bundle
    from .exporter import FP16_TOLERANCE, ExportOptions, export_sources, scene_folder
    from .onnx_export import read_sidecar, verify_export

    side = read_sidecar(export_dir)
    kind = side.get("source", "scene")
    for name, value in explicit_options(ctx, ("atol", "rtol")).items():
        if name in export_sources()[kind].ignores and not half:  # the FP16 check is relative everywhere
            raise InputError(f"--{name} does not apply to a {kind} export: {export_sources()[kind].ignores[name]}")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: must be a finite number >= 0")
    defaults = FP16_TOLERANCE if half else {"atol": ExportOptions().atol, "rtol": ExportOptions().rtol}
    atol = defaults["atol"] if atol is None else atol
    rtol = defaults["rtol"] if rtol is None else rtol
    if kind == "profile":  # `edgedp export PHONE.profile`: gd.onnx against the profile's G_D
        from .profile_export import verify_profile_export

        results = verify_profile_export(export_dir, scene, atol=atol, rtol=rtol if half else None, fp16=half)
    else:
        folder = scene if scene is not None else Path(side.get("bundle", ""))
        bundle = load_bundle(scene_folder(folder))
        results = verify_export(export_dir, bundle, atol=atol, rtol=rtol, fp16=half)
    ok = _print_verification(results, "fp16" if half else "verify")
    _polygraphy_hint(export_dir, side["graphs"])
    if not ok:
        typer.echo("error: verification failed (see above)", err=True)
        raise typer.Exit(1)
