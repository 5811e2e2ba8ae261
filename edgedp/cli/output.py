"""What the commands print: warnings, progress bars (a fit's stages, a batch's captures), a fit's stage
and memory lines, an export's verification lines.
"""

from __future__ import annotations

from pathlib import Path

import typer


def echo_warnings(messages, prefix: str = "") -> None:
    """Each message once, as one ``warning: ...`` line on stderr."""
    for message in dict.fromkeys(messages):
        typer.echo(f"warning: {prefix}{message}", err=True)


class FitProgress:
    """A :data:`edgedp.fit.config.ProgressCallback` drawing one rich progress bar per stage on stderr.

    When stderr is not a terminal (logs, CI) it prints a plain line at each quarter of a stage.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> "FitProgress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[loss]}"),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, stage: str, step: int, total: int, loss: float | None) -> None:
        text = "" if loss is None else f"loss {short_number(loss)}"
        if self.progress is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1), loss=text)
            self.progress.update(self.tasks[stage], completed=step, total=max(total, 1), loss=text)
            return
        quarter = (4 * step) // max(total, 1)
        if quarter > self.printed.get(stage, 0):
            self.printed[stage] = quarter
            typer.echo(f"{stage}: {step}/{total} it{', ' + text if text else ''}", err=True)


def short_number(value: float | None) -> str:
    """1.23e-4 style (no zero-padded exponent)."""
    if value is None:
        return "-"
    mantissa, _, exponent = f"{value:.2e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def memory_line(memory: dict | None) -> str:
    """``budget 6.00 GiB (--max-memory 6); tiled: 12 tiles (3x4), cores 1024 px, margin 152 px``
    from report.json's ``memory`` (:meth:`edgedp.fit.tiling.TilePlan.report`)."""
    if not memory:
        return "-"
    budget = memory.get("budget", {})
    head = f"budget {budget.get('gib', float('nan')):.2f} GiB ({budget.get('source', '?')}); "
    if not memory.get("tiled"):
        return head + f"whole frame (estimated {memory.get('estimate_whole_frame_gib', float('nan')):.2f} GiB)"
    rows, cols = memory.get("grid", [0, 0])
    return head + (f"tiled: {memory.get('tiles')} tiles ({rows}x{cols}), cores {memory.get('core_px')} px, margin "
                   f"{memory.get('margin_px')} px, G_D scale {memory.get('gd_scale')}, outputs in {memory.get('store')}")


def stage_line(index: int, stage) -> str:
    """``stage 2  defocus map   300 it   41.2 s   loss 1.23e-4`` for a StageReport; a step without a
    stage number keeps its own name (``kernel  field estimation   15 it ...``), not the list index."""
    name = str(stage.name)
    words = name.split()
    if len(words) >= 2 and words[0] == "stage" and words[1].isdigit():
        head, rest = f"stage {words[1]}", " ".join(words[2:])
    elif len(words) >= 2:
        head, rest = f"{words[0]:<7}", " ".join(words[1:])
    else:
        head, rest = f"stage {index}", name
    return f"{head}  {rest:<14}{stage.iterations:>6} it {stage.seconds:>8.1f} s   loss {short_number(stage.final_loss)}"


class BatchProgress:
    """One progress bar over a batch's captures on stderr (a plain line per capture when stderr
    is not a terminal)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total
        self.progress = None
        self.task = None

    def __enter__(self) -> "BatchProgress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("batch   "), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.fields[last]}"), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("batch", total=max(self.total, 1), last="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, record: dict, finished: int, total: int) -> None:
        what = f"{record['name']} {record['status']}"
        if self.progress is not None:
            self.progress.update(self.task, completed=finished, last=what)
        else:
            typer.echo(f"batch: {finished}/{total} {what}", err=True)


def print_verification(results: dict, label: str = "verify") -> bool:
    """One line per graph (worst output), and per output where a graph has several; True if all
    passed.  ``results``: a sidecar's ``verification`` (or ``verification_fp16``) dict."""
    ok = True
    for name, r in results.items():
        if name == "method":
            continue
        passed = bool(r.get("passed"))
        ok &= passed
        tol = f"atol {r['atol']:.0e}" + (f", rtol {r['rtol']:.0e}" if "rtol" in r else "")
        typer.echo(
            f"{label:<8} {name:<8} max abs {r['max_abs']:.2e}  max rel {r['max_rel']:.2e}  ({tol}) "
            f"{'ok' if passed else 'FAILED'}"
        )
        outputs = r.get("outputs") or {}
        if len(outputs) > 1:
            parts = ", ".join(f"{k} {v['max_abs']:.1e}" for k, v in outputs.items())
            typer.echo(f"{'':<8} {'':<8} max abs per output: {parts}")
    return ok


def polygraphy_hint(out: Path, graphs: dict) -> None:
    import importlib.util

    if importlib.util.find_spec("polygraphy") is None:
        return
    for name, g in graphs.items():
        cmd = f"polygraphy run {out / g['file']} --onnxrt --trt"
        if name == "gd" and g.get("dynamic"):
            m = int(g.get("multiple_of", 8))
            cmd += f" --input-shapes pair:[1,2,{m * 32},{m * 32}]"
        typer.echo(f"device   {cmd}")
