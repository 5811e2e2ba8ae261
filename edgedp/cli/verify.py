"""``edgedp verify``: re-run an export's graphs and compare with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .app import app, user_errors
from .options import explicit_options
from .output import polygraphy_hint, print_verification


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
    tolerances. --half runs each graph with every float tensor rounded to FP16 (edgedp.deploy.onnx_tools
    .emulate_fp16) against the same FP32 reference, with the FP16 tolerances.

    Examples:

      edgedp verify out/export

      edgedp verify out/export --scene out/scene --atol 1e-5

      edgedp verify out/export --half
    """
    import math

    from ..formats.bundle import load_bundle
    from ..deploy.exporter import FP16_TOLERANCE, ExportOptions, export_sources, scene_folder
    from ..deploy.onnx_export import read_sidecar, verify_export

    sidecar = read_sidecar(export_dir)
    kind = sidecar.get("source", "scene")
    for name, value in explicit_options(ctx, ("atol", "rtol")).items():
        if name in export_sources()[kind].ignores and not half:  # the FP16 check is relative everywhere
            raise InputError(f"--{name} does not apply to a {kind} export: {export_sources()[kind].ignores[name]}")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: must be a finite number >= 0")
    defaults = FP16_TOLERANCE if half else {"atol": ExportOptions().atol, "rtol": ExportOptions().rtol}
    atol = defaults["atol"] if atol is None else atol
    rtol = defaults["rtol"] if rtol is None else rtol
    if kind == "profile":  # `edgedp export PHONE.profile`: gd.onnx against the profile's G_D
        from ..deploy.profile_export import verify_profile_export

        results = verify_profile_export(export_dir, scene, atol=atol, rtol=rtol if half else None, fp16=half)
    else:
        folder = scene if scene is not None else Path(sidecar.get("bundle", ""))
        bundle = load_bundle(scene_folder(folder))
        results = verify_export(export_dir, bundle, atol=atol, rtol=rtol, fp16=half)
    ok = print_verification(results, "fp16" if half else "verify")
    polygraphy_hint(export_dir, sidecar["graphs"])
    if not ok:
        typer.echo("error: verification failed (see above)", err=True)
        raise typer.Exit(1)
