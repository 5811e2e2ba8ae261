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
from .errors import EdgedpError, InputError, OutputError

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


def read_options(
    black_level: Optional[float],
    white_level: Optional[float],
    flat_field: Optional[tuple[Path, Path]],
    crop: Optional[str],
    min_size: int = 1,
):
    """Build :class:`edgedp.io.ReadOptions` from the shared CLI input options."""
    from .io import ReadOptions, parse_size

    if flat_field is not None and any(p is None for p in flat_field):
        flat_field = None
    if white_level is not None and black_level is None:
        raise InputError("--white-level needs --black-level (raw mode)")
    return ReadOptions(
        black_level=black_level,
        white_level=white_level,
        flat_field=tuple(flat_field) if flat_field else None,
        crop=parse_size(crop) if crop else None,
        min_size=min_size,
    )


@app.command()
@user_errors
def info(
    left: LeftArg,
    right: RightArg,
    black_level: BlackLevelOpt = None,
    white_level: WhiteLevelOpt = None,
    flat_field: FlatFieldOpt = None,
    crop: CropOpt = None,
    max_disparity: Annotated[int, typer.Option(help="Largest |disparity| searched (px).")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Describe a DP pair: size, bit depth, value range, DP disparity range, side of focus.

    The disparity (x_right - x_left, px) is estimated by block matching; positive means the
    blurred content lies behind the focal plane (the thesis' "front focus").

    Examples:

      edgedp info left.png right.png

      edgedp info 001_left.png 001_right.png --black-level 1024 --white-level 16383 --crop 1008x1344
    """
    from .disparity import estimate_disparity
    from .io import read_dp_pair

    pair = read_dp_pair(left, right, read_options(black_level, white_level, flat_field, crop))
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
        "warnings": list(pair.info.warnings),
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    vr = report["value_range"]
    typer.echo(f"size          {h} x {w} (H x W), {c} channel(s), {pair.info.kind}, {pair.info.bit_depth}-bit")
    typer.echo(f"value range   left [{vr['left'][0]:.4f}, {vr['left'][1]:.4f}]  right [{vr['right'][0]:.4f}, {vr['right'][1]:.4f}]")
    typer.echo(
        f"disparity     {est.low:+.2f} .. {est.high:+.2f} px (median {est.median:+.2f}; x_right - x_left, 2nd-98th pct of tiles)"
    )
    typer.echo(f"focus side    {_side_text(est.side)}")
    for warning in pair.info.warnings:
        typer.echo(f"warning       {warning}")


def _side_text(side: str) -> str:
    return {
        "behind": "behind the focal plane dominates (positive disparity; thesis 'front focus')",
        "front": "in front of the focal plane dominates (negative disparity; thesis 'back focus')",
        "both": "both sides of the focal plane",
    }.get(side, side)


class FocusChoice(str, Enum):
    front = "front"
    both = "both"


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
    focus: Annotated[FocusChoice, typer.Option(help="front: all blur behind the focal plane; both: both sides.")] = FocusChoice.front,
    kernel: Annotated[SynthKernel, typer.Option(help="Parametric DP kernel model.")] = SynthKernel.butterworth,
    kernel_file: Annotated[
        Optional[Path], typer.Option(help=".npy kernels (2,K,K) [left,right] or (2,Pr,Pc,K,K), for radius (K-1)/2; overrides --kernel.")
    ] = None,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "301x401",
    max_radius: Annotated[float, typer.Option(help="Largest blur radius in the scene (px).")] = 8.0,
    depth: Annotated[DepthChoice, typer.Option(help="layered objects or a smooth depth.")] = DepthChoice.layered,
    spatially_varying: Annotated[bool, typer.Option(help="Kernels vary over the frame.")] = False,
    noise: Annotated[float, typer.Option(help="Read-noise standard deviation ([0,1] scale).")] = 0.002,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in OUT.")] = False,
) -> None:
    """Simulate a DP capture with ground truth (the built-in sample and test data).

    Writes left.png and right.png (16-bit, linear), gt_allinfocus.png (16-bit), gt_defocus.npy
    (signed blur radius in px, > 0 behind the focal plane) and scene.json (all parameters and the
    simulated disparity range).

    Examples:

      edgedp synth -o sample

      edgedp synth -o sample2 --focus both --kernel disk --size 480x640 --seed 3
    """
    import numpy as np
    import torch

    from .io import parse_size, prepare_output_dir, write_json, write_npy, write_png16
    from .synth import SynthConfig, make_scene

    user_kernels = None
    if kernel_file is not None:
        if not kernel_file.is_file():
            raise InputError(f"{kernel_file}: kernel file not found")
        try:
            user_kernels = torch.from_numpy(np.load(kernel_file).astype(np.float32))
        except Exception as err:  # numpy raises many kinds for a bad file
            raise InputError(f"{kernel_file}: cannot read kernels ({err.__class__.__name__})") from None
        if user_kernels.dim() not in (3, 5) or user_kernels.shape[0] != 2 or user_kernels.shape[-1] % 2 == 0:
            raise InputError(f"{kernel_file}: kernels must be (2,K,K) or (2,Pr,Pc,K,K) with odd K, got {tuple(user_kernels.shape)}")
        if not torch.isfinite(user_kernels).all() or (user_kernels < 0).any():
            raise InputError(f"{kernel_file}: kernels must be finite and non-negative")
    try:
        config = SynthConfig(
            size=parse_size(size),
            focus=focus.value,
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
    write_png16(out / "left.png", scene.left, overwrite=overwrite)
    write_png16(out / "right.png", scene.right, overwrite=overwrite)
    write_png16(out / "gt_allinfocus.png", scene.allinfocus, overwrite=overwrite)
    write_npy(out / "gt_defocus.npy", scene.defocus.numpy().astype(np.float32), overwrite=overwrite)
    write_json(out / "scene.json", scene.params, overwrite=overwrite)
    lo, hi = scene.params["disparity_percentiles_2_98_px"]
    typer.echo(
        f"wrote {out}: {config.size[0]}x{config.size[1]}, {config.focus} focus, {config.kernel} kernels, "
        f"blur radius {scene.params['defocus_range_px'][0]:+.1f}..{scene.params['defocus_range_px'][1]:+.1f} px, "
        f"disparity {lo:+.2f}..{hi:+.2f} px"
    )
