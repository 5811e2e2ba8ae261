"""``edgedp synth``: simulate a DP capture with ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, user_errors
from .options import FocusChoice, SynthKernel, focus_option


class DepthChoice(str, Enum):
    layered = "layered"
    smooth = "smooth"


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
    from ..synth import synth_config, synth_transfer, write_synth_capture

    transfer = synth_transfer(transfer)
    config, user_kernels = synth_config(
        size=size, focus=focus_option(focus), transfer=transfer, kernel=kernel.value, kernel_file=kernel_file,
        max_radius=max_radius, depth=depth.value, spatially_varying=spatially_varying, noise_std=noise, seed=seed,
    )
    out, scene = write_synth_capture(out, config, transfer=transfer, kernels=user_kernels, overwrite=overwrite)
    lo, hi = scene.params["disparity_percentiles_2_98_px"]
    typer.echo(
        f"wrote {out}: {config.size[0]}x{config.size[1]}, {transfer}, focus {config.focus}, {config.kernel} kernels, "
        f"blur radius {scene.params['defocus_range_px'][0]:+.1f}..{scene.params['defocus_range_px'][1]:+.1f} px, "
        f"disparity {lo:+.2f}..{hi:+.2f} px"
    )
