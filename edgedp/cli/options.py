"""Option declarations shared by the commands: the input options of every command that reads a DP pair
(:func:`with_input_options`), the fit options of `edgedp fit` and `edgedp batch` (:func:`with_fit_options`), the choices of ``--focus``,
``--preset``, ``--device`` and ``--kernel``, and which options a user set (:func:`explicit_options`).
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..conventions import fit_focus
from .app import F
from .output import echo_warnings


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
PatchesOpt = Annotated[Optional[str], typer.Option(help="Stage 3 kernel grid RxC, also the grid of --kernels (default 6x8).",
                                                   show_default=False)]
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


KernelsOpt = Annotated[
    Optional[tuple[Path, Path]],
    typer.Option(
        "--kernels",
        help="A kernel field instead of the parametric kernels: LEFT.npy RIGHT.npy, each (P, K, K) with P = rows x cols "
        "of --patches (row-major over the frame) or (rows, cols, K, K), K odd, behind the focal plane (the left "
        "kernel's mass on the left); each pair is recentred on reading. Not with stage 3 (--iterations N,0).",
        show_default=False,
    ),
]


ProfileOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Device profile from `edgedp tune`: kernels, layer radii, G_D warm start and input settings "
        "(black/white level, flat field) are taken from it; explicit flags win.",
        show_default=False,
    ),
]


def _input_options(
    black_level: BlackLevelOpt = None,
    white_level: WhiteLevelOpt = None,
    flat_field: FlatFieldOpt = None,
    crop: CropOpt = None,
    transfer: TransferOpt = None,
    camera: CameraOpt = None,
) -> None:
    """The input options of every command that reads DP pairs (`info`, `fit`, `batch`, `tune`),
    declared once (:func:`with_input_options`, :func:`with_fit_options`)."""


def _fit_only_options(
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
    kernels: KernelsOpt = None,
) -> None:
    """The options of one fit besides the input options: with them, each field of
    :class:`edgedp.run.capture.CaptureOptions` but ``overwrite`` (:func:`with_fit_options`)."""


def _input_values(values: dict) -> dict:
    """The input options as values: a pair option (``flat_field``) given half is not given."""
    if values.get("flat_field") is not None and any(p is None for p in values["flat_field"]):
        values["flat_field"] = None
    return values


def _with_options(command: F, declarations, after: str, gathered: str, gather) -> F:
    """Give a Typer command the parameters of ``declarations`` right after its parameter ``after``,
    and call it with them gathered into its keyword ``gathered`` (``gather(values)``)."""
    import inspect

    shared = [p for d in declarations for p in inspect.signature(d, eval_str=True).parameters.values()]
    names = [p.name for p in shared]
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != gathered]
    at = next(i for i, p in enumerate(own) if p.name == after) + 1

    @functools.wraps(command)
    def wrapper(**kwargs):
        values = {name: kwargs.pop(name) for name in names}
        return command(**kwargs, **{gathered: gather(values)})

    wrapper.__signature__ = inspect.Signature(own[:at] + shared + own[at:])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper  # type: ignore[return-value]


def with_input_options(after: str):
    """Decorator: give a Typer command the input options (:func:`_input_options`) right after its
    parameter ``after`` and call it with them in ``inputs`` (a dict of the six values, the keywords of
    :func:`edgedp.fit.options.camera_read_options`)."""
    return lambda command: _with_options(command, (_input_options,), after, "inputs", _input_values)


def with_fit_options(command: F) -> F:
    """Give a Typer command the input and fit options (:func:`_input_options`,
    :func:`_fit_only_options`), right after its ``out`` parameter, and call it with them gathered in
    ``options`` (a CaptureOptions; enums as their values).  A new fit option is one parameter of
    ``_fit_only_options`` and one CaptureOptions field."""
    from ..run.capture import CaptureOptions, parse_max_memory

    def gather(values: dict):
        values["focus"] = focus_option(values["focus"])
        values = _input_values({k: (v.value if isinstance(v, Enum) else v) for k, v in values.items()})
        if values["kernels"] is not None and any(p is None for p in values["kernels"]):
            values["kernels"] = None
        values["max_memory"] = parse_max_memory(values["max_memory"])
        return CaptureOptions(**values)

    return _with_options(command, (_input_options, _fit_only_options), "out", "options", gather)


def explicit_options(ctx: typer.Context, names: tuple[str, ...]) -> dict:
    """The options among ``names`` that the user set on the command line (not left at their
    defaults), with their values: an option a format ignores is refused, not silently dropped."""
    given = {}
    for name in names:
        source = ctx.get_parameter_source(name)  # click's ParameterSource (typer vendors click)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = ctx.params[name]
    return given
