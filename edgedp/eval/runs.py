"""Timed subprocess runs of the benchmarks (``tools/bench_*.py``): a command under a bare Python
wrapper that reports its wall time and peak RSS (:func:`run_fit`), its log's last lines
(:func:`log_tail`), progress lines on stderr (:func:`say`), SIGTERM as a clean exit
(:func:`exit_on_sigterm`) and the benchmarks' exit statuses."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "EXIT_FIT_FAILED", "EXIT_OK", "EXIT_TARGETS", "EXIT_USAGE", "GIB", "TAIL_LINES",
    "FitFailed", "FitRun", "exit_on_sigterm", "log_tail", "run_fit", "run_step", "say",
]

GIB = 1024**3
#: Log lines shown when a fit fails.
TAIL_LINES = 25

#: Exit statuses of the benchmarks: done; a fit failed; bad arguments or data; ``--strict`` and a target failed.
EXIT_OK, EXIT_FIT_FAILED, EXIT_USAGE, EXIT_TARGETS = 0, 1, 2, 3


class FitFailed(Exception):
    """A fit exited non-zero or left no usable output; the message is one line."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class FitRun:
    """One finished fit subprocess."""

    command: list[str]
    returncode: int
    wall_s: float
    #: ``ru_maxrss`` of the child (and the descendants it waited for), bytes.
    peak_rss_bytes: int
    log: Path

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / GIB


# Runs the fit and reports its own rusage.  A child's ru_maxrss starts from the RSS of the
# process it was forked / vforked from (Linux carries the old mm's high-water mark over exec), so
# waiting on the fit directly from this process (torch and the images loaded) would add our own
# few hundred MiB.  The wrapper is a bare interpreter (-I -S: no site, no imports beyond the
# builtins), which bounds that bias to its ~10 MiB.
_WRAPPER = r"""
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
try:
    pid = os.posix_spawnp(command[0], command, os.environ)
except OSError as err:
    print(f"cannot run {command[0]}: {err}", file=sys.stderr)
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as handle:
    json.dump({"returncode": code, "wall_s": wall, "maxrss_kib": usage.ru_maxrss}, handle)
sys.exit(code if code >= 0 else 128 - code)
"""


def _pump(source: BinaryIO, log: BinaryIO, echo: BinaryIO | None) -> None:
    """Copy the child's output to the log (and the terminal) as it comes, ``\\r`` included."""
    fd = source.fileno()
    while chunk := os.read(fd, 65536):
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(chunk)
            echo.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the wrapper's process group (the wrapper and the fit) and reap the wrapper."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_fit(command: list[str], log_path: Path, *, quiet: bool = False) -> FitRun:
    """Run ``command``, stream its output, and measure its wall time and peak RSS.

    The fit runs under a bare Python wrapper (see ``_WRAPPER``) that reaps it with
    ``os.wait4`` and reports its wall time and ``ru_maxrss`` (KiB on Linux): the peak RSS of
    the fit and the descendants it waited for.  stdout and stderr go, merged, to ``log_path``
    and (unless ``quiet``) to our stderr.  The wrapper gets its own process group, so Ctrl-C
    here kills the fit too.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".rusage.json")
    usage_path.unlink(missing_ok=True)
    echo = None if quiet else sys.stderr.buffer
    wrapper = [sys.executable, "-I", "-S", "-c", _WRAPPER, str(usage_path), *command]
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            wrapper,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, echo), daemon=True)
        pump.start()
        try:
            returncode = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        outer_wall = time.perf_counter() - start
        # A grandchild of the fit may still hold the pipe: do not wait for it forever.
        pump.join(timeout=10.0)
        if not pump.is_alive():
            proc.stdout.close()
    try:
        usage = json.loads(usage_path.read_text())
    except (OSError, ValueError):
        # The wrapper died before reporting (killed); keep what we know.
        usage = {"returncode": returncode, "wall_s": outer_wall, "maxrss_kib": 0}
    return FitRun(
        command=command,
        returncode=int(usage["returncode"]),
        wall_s=float(usage["wall_s"]),
        peak_rss_bytes=int(usage["maxrss_kib"]) * 1024,
        log=log_path,
    )


def run_step(name: str, command: list[str], out: Path, quiet: bool) -> FitRun:
    """One named step of a benchmark: say its command, run it (:func:`run_fit`, log at
    ``out/logs/NAME.log``) and raise :class:`FitFailed` with the log's tail unless it exits 0."""
    say(f"  {name}: {shlex.join(command)}")
    run = run_fit(command, out / "logs" / f"{name}.log", quiet=quiet)
    if run.returncode != 0:
        raise FitFailed(f"{name} exited with status {run.returncode}", log_tail(run.log))
    return run


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, progress-bar redraws (``\\r``) collapsed.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "fit.log"
    >>> _ = log.write_bytes(b"stage 1\\rstage 2: 10%\\rstage 2: 100%\\nwrote out\\n")
    >>> print(log_tail(log))
    stage 2: 100%
    wrote out
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = [row.rsplit("\r", 1)[-1] for row in text.replace("\r\n", "\n").split("\n")]
    rows = [row for row in rows if row.strip()]
    return "\n".join(rows[-lines:])


def say(message: str) -> None:
    """Print a progress line to stderr (stdout holds the tables)."""
    print(message, file=sys.stderr, flush=True)


def exit_on_sigterm(signum: int, _frame: object) -> None:
    """A SIGTERM handler (``signal.signal(signal.SIGTERM, exit_on_sigterm)``): exit with ``128 + signum``.

    SystemExit unwinds through :func:`run_fit`, which then kills the fit's process group."""
    raise SystemExit(128 + signum)
