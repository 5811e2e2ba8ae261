"""``edgedp batch``: fit many captures (:func:`edgedp.run.batch.run_batch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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
    from ..run.batch import (BatchConfig, batch_captures, finished_captures, grouped_warnings, run_batch, status_counts,
                             summary_line, summary_rows)

    captures, notes = batch_captures(inputs, out)
    echo_warnings(notes)
    config = BatchConfig(out=out, options=options, jobs=jobs, threads=threads, backend=backend.strip().lower(),
                         address=address, connect_timeout=connect_timeout, resume=resume, overwrite=overwrite)
    progress = BatchProgress(len(captures))
    try:
        with progress:
            result = run_batch(config, captures, on_record=progress)
    except KeyboardInterrupt:
        typer.echo(f"error: interrupted with {finished_captures(out)} of {len(captures)} captures complete in {out}; "
                   "run the same command with --resume to fit the rest", err=True)
        raise typer.Exit(130) from None
    for line in grouped_warnings(result.records):
        echo_warnings([line])
    for row in summary_rows(result.records):
        typer.echo(row)
    typer.echo(summary_line(result, config))
    if status_counts(result.records)["failed"]:
        raise typer.Exit(1)
