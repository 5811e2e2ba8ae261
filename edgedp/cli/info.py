"""``edgedp info``: describe a DP pair."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..conventions import side_text
from ..fit.options import camera_read_options
from .app import app, user_errors
from .options import LeftArg, RightArg, with_input_options
from .output import echo_warnings


@app.command()
@user_errors
@with_input_options(after="right")
def info(
    left: LeftArg,
    right: RightArg,
    max_disparity: Annotated[int, typer.Option(help="Largest |disparity| searched (px).")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    *,
    inputs: dict,
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
    from ..physics.disparity import estimate_disparity
    from ..io.images import read_dp_pair

    pair = read_dp_pair(left, right, camera_read_options(**inputs))
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
        "camera": inputs["camera"],
        "black_level": pair.info.black_level,
        "white_level": pair.info.white_level,
        "warnings": list(pair.info.warnings),
    }
    echo_warnings(pair.info.warnings)
    if as_json:
        typer.echo(json.dumps(report))
        return
    from ..run.capture import transfer_line

    vr = report["value_range"]
    typer.echo(f"size          {h} x {w} (H x W), {c} channel(s), {pair.info.kind}, {pair.info.bit_depth}-bit")
    typer.echo(f"transfer      {transfer_line(report['transfer'])[len('transfer '):]}")
    typer.echo(f"value range   left [{vr['left'][0]:.4f}, {vr['left'][1]:.4f}]  right [{vr['right'][0]:.4f}, {vr['right'][1]:.4f}]")
    typer.echo(
        f"disparity     {est.low:+.2f} .. {est.high:+.2f} px (median {est.median:+.2f}; x_right - x_left, 2nd-98th pct of tiles)"
    )
    typer.echo(f"focus side    {side_text(est.side)}")
