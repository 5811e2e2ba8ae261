"""``edgedp export``: a fitted scene or a device profile to ONNX / TensorRT (:func:`edgedp.deploy.exporter.run_export`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, user_errors
from .options import explicit_options
from .output import polygraphy_hint, print_verification


class ExportFormatChoice(str, Enum):
    onnx = "onnx"
    engine = "engine"


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
    instant_field: Annotated[bool, typer.Option("--instant-field/--instant-mean-kernels", help="Profiles with a kernel field: the instant path solves with the field (its cells grouped by kernel, at most --instant-groups groups) or with the field's mean kernels (about 1.5x faster, 0.5 dB lower on the Pixel 4 dev scenes).")] = True,
    instant_groups: Annotated[Optional[int], typer.Option("--instant-groups", help="Profiles with a kernel field: the most groups of cells the instant path solves apart (default 8; more follow the field more closely and cost more time per call).")] = None,
) -> None:
    """Bake a fitted scene into render.onnx, refocus.onnx and gd.onnx (+ export.json), or a
    device profile into gd.onnx and kernels.npy (+ patch_kernels.npy with a kernel field, +
    export.json) for the instant on-device path.

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
    from ..deploy.exporter import run_export, verification_passed

    given = explicit_options(ctx, ("opset", "half", "dynamic", "workspace", "verify", "atol", "rtol", "instant_field", "instant_groups"))
    sidecar = run_export(scene, out, format.value, given, overwrite=overwrite, log=typer.echo)
    files = [g["file"] for g in sidecar["graphs"].values()] + [g["engine"] for g in sidecar["graphs"].values() if "engine" in g]
    if "instant" in sidecar:
        files.append(sidecar["instant"]["kernels"])
        if sidecar["instant"].get("patch_kernels"):  # a profile with a kernel field (not --instant-mean-kernels)
            files.append(sidecar["instant"]["patch_kernels"])
    typer.echo(f"wrote    {out}: {', '.join(files)}, export.json (opset {sidecar['opset']})")
    for note in sidecar.get("notes", []):
        typer.echo(f"note     {note}")
    print_verification(sidecar.get("verification", {}))
    if "verification_fp16" in sidecar:
        print_verification(sidecar["verification_fp16"], "fp16")
    polygraphy_hint(out, sidecar["graphs"])
    if not verification_passed(sidecar):
        typer.echo("error: verification failed (see above)", err=True)
        raise typer.Exit(1)
