"""``edgedp fit``: fit one DP pair zero-shot (:func:`edgedp.run.capture.fit_capture`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..conventions import AUTO
from .app import app, user_errors
from .options import LeftArg, RightArg, with_fit_options
from .output import FitProgress, echo_warnings, memory_line, stage_line


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
    edgedp.formats.bundle) and report.json (settings, per-stage time and losses, peak memory). Progress
    and warnings go to stderr, the summary to stdout.

    Examples:

      edgedp fit left.png right.png -o out

      edgedp fit 001_left.png 001_right.png -o out/001 --camera pixel4 --flat-field white_sheet_left.png white_sheet_right.png --crop 1008x1344 --preset fast --overwrite

      edgedp fit left.png right.png -o out --focus both --max-kernel 35 --iterations 500,100 --warm-start other/scene

      edgedp fit camera_left.jpg camera_right.jpg -o out --transfer srgb

      edgedp fit left.png right.png -o out --kernels blur_kernels_left.npy blur_kernels_right.npy --patches 6x8
    """
    import dataclasses

    from ..run.capture import FIT_OUTPUTS, fit_capture, kernels_line, transfer_line

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
    field = report.get("kernel_field")
    typer.echo(f"kernels  {kernels_line(field, field is not None and 'profile' in (field.get('from'), field.get('prior')), result.config.kernel_model)}")
    typer.echo(f"memory   {memory_line(report.get('memory'))}")
    typer.echo(
        f"wrote    {out}: {', '.join(n + ('/' if n == 'scene' else '') for n in FIT_OUTPUTS)} "
        f"({report['seconds']['total']:.1f} s, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB)"
    )
