"""``edgedp batch``: fit many captures (:func:`edgedp.run.batch.run_batch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .app import app, user_errors
from .options import with_fit_options
from .output import BatchProgress, echo_warnings


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
    connect_timeout: Annotated[
        float,
        typer.Option(help="Ray: seconds to wait for the cluster at --address before giving up with one error line."),
    ] = 30.0,
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
    the cluster at --address, with the same results and manifest (a cluster that does not answer
    within --connect-timeout seconds is one error line). One batch at a time per OUT: a second
    batch into an OUT that a running batch holds is refused.

    Examples:

      edgedp batch captures/ -o out/batch --preset fast

      edgedp batch dd_dp_dataset_png/ -o out/dpdd --transfer srgb --jobs 2 --resume

      edgedp batch list.txt a_left.png,a_right.png -o out/b --camera pixel4 --backend ray --address head:6379
    """
    import time

    from ..run.batch import BatchConfig, run_batch, summary_rows
    from ..io.discovery import find_captures

    if out is None:
        raise InputError("missing -o/--out: the batch folder to write into")
    if not inputs:
        raise InputError("no captures given: name folders of pairs, LEFT,RIGHT pairs or .txt lists")
    captures, notes = find_captures(inputs)
    echo_warnings(notes)
    config = BatchConfig(out=out, options=options, jobs=jobs, threads=threads, backend=backend.strip().lower(),
                         address=address, connect_timeout=connect_timeout, resume=resume, overwrite=overwrite)
    progress = BatchProgress(len(captures))
    try:
        with progress:
            result = run_batch(config, captures, on_record=progress)
    except KeyboardInterrupt:
        from ..run.batch import read_manifest

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
