"""``edgedp synth``: simulate a DP capture with ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..conventions import BEHIND, BOTH
from ..errors import InputError, OutputError
from .app import app, user_errors
from .options import FocusChoice, SynthKernel, focus_option


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

    from ..io.images import parse_size
    from ..io.writers import prepare_output_dir, write_json, write_npy, write_png16, write_srgb_png8
    from ..synth import SynthConfig, load_kernel_file, make_scene
    from ..io.transfer import SRGB, check_transfer

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
