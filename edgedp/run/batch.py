"""Fit many DP captures: ``edgedp batch`` on local processes or as Ray tasks.

Every capture is fitted by :func:`edgedp.run.capture.fit_capture` (what ``edgedp fit`` runs) with
the same :class:`~edgedp.run.capture.CaptureOptions`, into ``OUT/<name>/`` (names from
:func:`edgedp.io.discovery.find_captures`).

On disk (``OUT``):

* ``<name>/``: the outputs of ``edgedp fit``.  A capture is written into a hidden staging
  folder ``OUT/.edgedp-partial-<name>-<hex>/`` and renamed to ``OUT/<name>`` only when all its
  files are written, so ``OUT/<name>`` is either complete or absent; staging folders a killed run
  left behind are removed when the next batch starts in ``OUT``.
* ``manifest.jsonl``: one JSON object a line, appended (and flushed to disk) as each capture
  ends: ``name``, ``status`` (``done``, ``failed`` or ``skipped``: complete outputs found by
  ``--resume``), ``left``, ``right``, ``out``, ``settings`` (the CaptureOptions), ``threads``,
  ``transfer``, ``size_hw``, ``seconds`` (read, fit, write, total of the fit), ``wall_seconds``
  (the capture's time in its worker), ``peak_rss_mib`` (the worker's peak while it fitted this
  capture), ``warnings``, ``error`` (the one-line message of a failure, else null),
  ``started``/``finished`` (UTC), ``backend``, ``worker`` (host, pid).  The last line of a name
  is its state.
* ``index.html``: a gallery of the previews (input | all-in-focus | defocus) with relative links
  only, so it opens offline.

Parallelism: ``jobs`` captures at a time, each with ``threads`` torch threads (default
``cores // jobs``, so the machine is not oversubscribed).  ``local`` runs them in this process
(``jobs = 1``) or in ``jobs`` worker processes; ``ray`` submits one Ray task per capture with
``num_cpus = threads`` (and ``num_gpus = 1`` with ``--device cuda``).  With the same threads a
capture gives the same result on either backend.  Ray workers read the inputs at the paths given
(shared storage on a multi-node cluster) and send the output files back through Ray's object
store, so ``OUT`` only needs to exist where ``edgedp batch`` runs.
"""

from __future__ import annotations

import dataclasses
import fcntl
import html
import json
import math
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from edgedp_runtime.atomic import recover, swap_in

from .capture import CaptureOptions, capture_config, fit_capture, outputs_complete, reset_peak_rss
from ..errors import EdgedpError, InputError, OutputError
from ..io.discovery import Capture

MANIFEST_NAME = "manifest.jsonl"
#: The lock of a running batch in OUT (``flock``-ed, holding its pid and host): a second batch
#: into the same OUT is refused; the kernel releases the lock when its process dies, so the
#: lock of a killed batch is taken over by the next.
LOCK_NAME = ".edgedp-batch.lock"
INDEX_NAME = "index.html"
#: Prefix of the hidden folders a capture is written into before its rename (and of replaced
#: outputs on their way out); only edgedp creates them, so a new batch may delete them.
STAGING_PREFIX = ".edgedp-partial-"
REPLACED_PREFIX = ".edgedp-replaced-"
BACKENDS = ("local", "ray")
CLUSTER_EXTRA = "pip install 'edgedp[cluster]'"


@dataclass(frozen=True)
class BatchConfig:
    """How ``edgedp batch`` runs.

    Attributes:
        out: the batch folder.
        options: the fit options of every capture.
        jobs: captures fitted at the same time (local processes; Ray: used for the default threads).
        threads: torch threads per capture (Ray: ``num_cpus`` per task); None: ``cores // jobs``.
        backend: ``local`` or ``ray``.
        address: Ray cluster address (None: ``ray.init()``'s own search, else a local instance).
        connect_timeout: seconds to wait for the cluster at ``address`` (or ``RAY_ADDRESS``): Ray
            itself retries for minutes, so a host:port that does not answer within it is one
            InputError before anything is written (default 30).
        resume: skip captures whose outputs are complete; append to the manifest.
        overwrite: fit every capture again, replacing outputs; start a new manifest.
    """

    out: Path
    options: CaptureOptions = CaptureOptions()
    jobs: int = 1
    threads: int | None = None
    backend: str = "local"
    address: str | None = None
    connect_timeout: float = 30.0
    resume: bool = False
    overwrite: bool = False


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads per capture for ``jobs`` parallel captures: ``cores // jobs``, at least 1."""
    return max(1, (cores or available_cores()) // max(1, jobs))


@dataclass(frozen=True)
class CaptureTask:
    """One capture for a worker: what to fit, where its folder goes, with what."""

    name: str
    left: str
    right: str
    out: str
    options: CaptureOptions
    threads: int
    backend: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _record(task: CaptureTask, status: str, *, report: dict | None = None, error: str | None = None,
            started: str, wall: float, warnings: list[str] | None = None) -> dict:
    info = (report or {}).get("input", {})
    return {
        "name": task.name,
        "status": status,
        "left": task.left,
        "right": task.right,
        "out": task.name + "/",
        "settings": task.options.settings(),
        "threads": task.threads,
        "transfer": info.get("transfer"),
        "size_hw": info.get("size_hw"),
        "seconds": (report or {}).get("seconds"),
        "wall_seconds": wall,
        "peak_rss_mib": (report or {}).get("peak_rss_mib"),
        "warnings": list(warnings if warnings is not None else info.get("warnings", [])),
        "error": error,
        "started": started,
        "finished": _now(),
        "backend": task.backend,
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},
    }


def run_capture(task: CaptureTask, staging: str) -> dict:
    """Fit ``task`` into the folder ``staging`` (created; removed again on failure) with
    ``task.threads`` torch threads; returns the manifest record.  Never raises for a failed fit:
    a user error's message or an unexpected exception's type and message become ``error``."""
    import torch

    started, t0 = _now(), time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    reset_peak_rss()
    warnings: list[str] = []
    try:
        done = fit_capture(task.left, task.right, task.out, task.options, warn=warnings.append, write_to=staging)
        return _record(task, "done", report=done.report, started=started, wall=time.perf_counter() - t0, warnings=warnings)
    except EdgedpError as err:
        message = _one_line(err)
    except Exception as err:  # noqa: BLE001 - one capture's bug must not end the batch
        where = traceback.extract_tb(err.__traceback__)[-1]
        message = _one_line(f"internal error {type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})")
    finally:
        torch.set_num_threads(previous_threads)
    shutil.rmtree(staging, ignore_errors=True)
    return _record(task, "failed", error=message, started=started, wall=time.perf_counter() - t0, warnings=warnings)


def _worker_init() -> None:
    """Local worker processes die with the batch: a killed ``edgedp batch`` leaves no fit
    running that writes into a staging folder the next run deletes (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_capture_remote(task: CaptureTask) -> tuple[dict, dict[str, bytes]]:
    """A Ray task: fit ``task`` into a temporary folder on the worker's node and return the
    manifest record and the output files (relative path -> bytes) for the driver to write."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="edgedp-ray-")
    try:
        staging = os.path.join(folder, task.name)
        record = run_capture(task, staging)
        files = read_tree(staging) if record["status"] == "done" else {}
        return record, files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_tree(folder: str | Path) -> dict[str, bytes]:
    """Every file below ``folder``: relative POSIX path -> bytes."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tree(folder: str | Path, files: dict[str, bytes]) -> None:
    """Write :func:`read_tree`'s dict below ``folder`` (created)."""
    folder = Path(folder)
    for relative, data in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ---------------------------------------------------------------------------------------------
# The batch folder


@dataclass
class Plan:
    """What a batch will do: captures to fit, captures skipped (complete outputs found by
    ``--resume``), and captures whose folder is in the way (name -> the one-line reason)."""

    todo: list[Capture]
    skipped: list[Capture]
    conflicts: dict[str, str]


def plan_batch(config: BatchConfig, captures: list[Capture]) -> Plan:
    """Check ``OUT`` against the captures before any fit (OutputError for a folder that cannot
    be used), remove stale staging folders, and decide what to fit.

    Without ``resume`` or ``overwrite``, existing capture outputs or an earlier manifest in OUT
    are refused.  With ``resume``, complete outputs of the same views are skipped; a folder that
    is incomplete or holds another capture's outputs is a conflict (that capture fails; its
    folder is left alone)."""
    from ..io.writers import prepare_output_dir

    if config.resume and config.overwrite:
        raise InputError("--resume and --overwrite exclude each other: --resume keeps complete outputs, --overwrite replaces them")
    out = prepare_output_dir(config.out)
    # OUT is locked by this batch (BatchLock), so every staging folder in it is a dead run's
    for stale in out.iterdir():
        if stale.is_dir() and (stale.name.startswith(STAGING_PREFIX) or stale.name.startswith(REPLACED_PREFIX)):
            shutil.rmtree(stale, ignore_errors=True)
    for capture in captures:
        recover(out / capture.name)  # a capture's swap killed between its two renames
    existing = [c for c in captures if (out / c.name).exists()]
    if not (config.resume or config.overwrite):
        if existing:
            raise OutputError(f"{out / existing[0].name} exists (use --resume to skip complete captures, or --overwrite)")
        if (out / MANIFEST_NAME).exists():
            raise OutputError(f"{out / MANIFEST_NAME} of an earlier batch exists (use --resume or --overwrite)")
    todo, skipped, conflicts = [], [], {}
    for capture in captures:
        folder = out / capture.name
        if config.resume and folder.exists():
            if outputs_complete(folder, capture.left, capture.right):
                skipped.append(capture)
                continue
            if not folder.is_dir() or any(folder.iterdir()):
                conflicts[capture.name] = (
                    f"{folder} exists but does not hold complete outputs of {capture.left} (left alone; "
                    "use --overwrite to replace it)"
                )
                continue
        todo.append(capture)
    return Plan(todo=todo, skipped=skipped, conflicts=conflicts)


def commit(out: Path, name: str, staging: Path) -> None:
    """Move a complete staging folder to ``out/name`` (replacing what is there: the batch was
    asked to overwrite, or it was an empty folder)."""
    swap_in(staging, out / name)  # the one folder swap of edgedp (edgedp_runtime.atomic)


class BatchLock:
    """``OUT/.edgedp-batch.lock``, held (``flock``) for the whole batch, so a second batch into
    the same OUT (even ``--resume``) is refused instead of deleting the first's live staging
    folders.  The file holds the holder's pid and host for the message.  The kernel drops the lock
    of a dead process, so a killed batch's lock is simply taken over; a batch that ends removes
    the file (a locker checks that the file it locked is still the one at the path, so the
    removal cannot let two batches in)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot create the batch lock {self.path} ({err.strerror or err})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
                except OSError:
                    holder = []
                os.close(fd)
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
                raise OutputError(f"{out} is in use by a running edgedp batch ({who}): wait for it to end, or "
                                  "choose another -o") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we locked it: lock the new one
        else:
            raise OutputError(f"cannot lock {self.path}: it keeps changing")
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Remove the lock file, then drop the lock."""
        if self.fd >= 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class Manifest:
    """``OUT/manifest.jsonl``: one record a line, each flushed to disk before the next capture."""

    def __init__(self, out: Path, fresh: bool) -> None:
        self.path = out / MANIFEST_NAME
        self.fresh = fresh
        self.handle = None
        # opened at the first record, not before: a batch that never started (Ray unreachable)
        # leaves no manifest that would refuse the corrected command (issue 17)
        if not os.access(out, os.W_OK):
            raise OutputError(f"cannot write {self.path} (folder not writable)")

    def append(self, record: dict) -> None:
        if self.handle is None:
            try:
                self.handle = open(self.path, "w" if self.fresh else "a", encoding="utf-8")
            except OSError as err:
                raise OutputError(f"cannot write {self.path} ({err.strerror or err})") from None
        self.handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def read_manifest(out: Path | str) -> dict[str, dict]:
    """The last record of every capture in ``OUT/manifest.jsonl`` (a torn last line of a killed
    run is ignored)."""
    records: dict[str, dict] = {}
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        records[record["name"]] = record
    return records


def skipped_record(task: CaptureTask, folder: Path) -> dict:
    """The manifest record of a capture whose complete outputs ``--resume`` found: its
    report.json's numbers, status ``skipped``."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    record = _record(task, "skipped", report=report, started=_now(), wall=0.0)
    record["previous"] = {"created": report.get("created"), "threads": report.get("settings", {}).get("torch_threads")}
    return record


# ---------------------------------------------------------------------------------------------
# Backends: each yields (record, staging folder or None) as captures finish


def _local_results(config: BatchConfig, tasks: list[CaptureTask], out: Path) -> Iterator[tuple[dict, Path | None]]:
    def staging_for(task: CaptureTask) -> Path:
        return out / f"{STAGING_PREFIX}{task.name}-{uuid.uuid4().hex[:8]}"

    if config.jobs <= 1:
        for task in tasks:
            staging = staging_for(task)
            try:
                record = run_capture(task, str(staging))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            yield record, staging if record["status"] == "done" else None
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context, initializer=_worker_init) as pool:
        pending = {}
        for task in tasks:
            staging = staging_for(task)
            pending[pool.submit(run_capture, task, str(staging))] = (task, staging)
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task, staging = pending.pop(future)
                    try:
                        record = future.result()
                    except Exception as err:  # a worker process died (e.g. killed for memory)
                        shutil.rmtree(staging, ignore_errors=True)
                        record = _record(task, "failed", error=_one_line(f"worker process failed: {type(err).__name__}: {err}"),
                                         started=_now(), wall=0.0)
                    yield record, staging if record["status"] == "done" else None
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def ray_module():
    """``import ray``, or a one-line InputError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--backend ray needs Ray, which is not installed: {CLUSTER_EXTRA}") from None
    return ray


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port``, ``ray://host:port``; None: ``RAY_ADDRESS``),
    or None for ``auto`` / ``local`` / no address (Ray's own search or a local instance)."""
    text = (address if address is not None else os.environ.get("RAY_ADDRESS", "")).strip()
    if text.startswith("ray://"):
        text = text[len("ray://"):]
    if not text or text in ("auto", "local") or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        return None  # malformed: ray.init's own one-line refusal


def check_ray_address(address: str | None, timeout: float) -> None:
    """A one-line InputError when nothing answers at the cluster address within ``timeout``
    seconds.  Why: ``ray.init(address=...)`` retries the cluster's GCS for more than ten minutes
    before it fails, and a batch that never ends is worse than one that says why it stopped."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--connect-timeout {timeout}: must be a finite number of seconds > 0")
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    where = f"--address {address}" if address is not None else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise InputError(f"{where}: no Ray cluster answers at {endpoint[0]}:{endpoint[1]} within {timeout:g} s "
                         f"({reason}); start it with `ray start --head` or fix the address") from None


def _ray_results(config: BatchConfig, tasks: list[CaptureTask], out: Path) -> Iterator[tuple[dict, Path | None]]:
    import logging

    ray = ray_module()
    started_here = False
    if not ray.is_initialized():  # run_batch checked the address within --connect-timeout
        try:
            ray.init(address=config.address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"--address {config.address}" if config.address else "ray.init()"
            raise InputError(f"{where}: cannot start or reach a Ray cluster ({_one_line(err)})") from None
        started_here = True
    try:
        gpus = 1 if config.options.device == "cuda" else 0
        remote = ray.remote(run_capture_remote).options(num_cpus=tasks[0].threads if tasks else 1, num_gpus=gpus)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    record, files = ray.get(ref)
                except ray.exceptions.RayError as err:  # the task or its worker died
                    record, files = _record(task, "failed", error=_one_line(f"Ray task failed: {err}")[:500],
                                            started=_now(), wall=0.0), {}
                staging = None
                if record["status"] == "done":
                    staging = out / f"{STAGING_PREFIX}{task.name}-{uuid.uuid4().hex[:8]}"
                    write_tree(staging, files)
                yield record, staging
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The batch


@dataclass
class BatchResult:
    """Per capture, its final manifest record (in input order), and the batch's wall time."""

    records: list[dict]
    seconds: float


def run_batch(
    config: BatchConfig,
    captures: list[Capture],
    *,
    on_record: Callable[[dict, int, int], None] | None = None,
) -> BatchResult:
    """Fit ``captures`` as ``config`` says; see the module docstring for what lands in OUT.

    ``on_record(record, finished, total)`` is called as each capture ends (skipped ones first).
    A failed capture does not stop the batch.  Raises InputError/OutputError (one line) only for
    problems of the batch as a whole: bad options, an unusable OUT, no Ray.
    """
    if config.backend not in BACKENDS:
        raise InputError(f"unknown --backend '{config.backend}' (choose {', '.join(BACKENDS)})")
    if config.jobs < 1:
        raise InputError(f"--jobs {config.jobs}: must be >= 1")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads {config.threads}: must be >= 1")
    if config.options.overwrite:
        config = dataclasses.replace(config, options=dataclasses.replace(config.options, overwrite=False))
    capture_config(config.options)  # every option checked once, before the first fit
    if config.backend == "ray":
        ray_module()
    if config.backend == "ray":
        check_ray_address(config.address, config.connect_timeout)  # before OUT is touched
    t0 = time.perf_counter()
    if config.resume and config.overwrite:
        raise InputError("--resume and --overwrite exclude each other: --resume keeps complete outputs, --overwrite replaces them")
    from ..io.writers import prepare_output_dir

    out = prepare_output_dir(config.out)
    lock = BatchLock(out)
    try:
        return _run_locked(config, captures, out, t0, on_record)
    finally:
        lock.release()


def _run_locked(config: BatchConfig, captures: list[Capture], out: Path, t0: float,
                on_record: Callable[[dict, int, int], None] | None) -> BatchResult:
    """:func:`run_batch` once OUT is locked."""
    plan = plan_batch(config, captures)
    threads = config.threads or threads_per_job(config.jobs)

    def task_for(capture: Capture) -> CaptureTask:
        return CaptureTask(name=capture.name, left=str(capture.left), right=str(capture.right), out=str(out / capture.name),
                           options=config.options, threads=threads, backend=config.backend)

    manifest = Manifest(out, fresh=config.overwrite or not (out / MANIFEST_NAME).exists())
    records: dict[str, dict] = {}
    total, finished = len(captures), 0

    def note(record: dict) -> None:
        nonlocal finished
        records[record["name"]] = record
        manifest.append(record)
        finished += 1
        write_index(out, [records[c.name] for c in captures if c.name in records])
        if on_record is not None:
            on_record(record, finished, total)

    try:
        for capture in plan.skipped:
            note(skipped_record(task_for(capture), out / capture.name))
        for name, message in plan.conflicts.items():
            capture = next(c for c in captures if c.name == name)
            note(_record(task_for(capture), "failed", error=message, started=_now(), wall=0.0))
        tasks = [task_for(c) for c in plan.todo]
        results: Iterable = (_ray_results if config.backend == "ray" else _local_results)(config, tasks, out) if tasks else ()
        for record, staging in results:
            if staging is not None:
                try:
                    commit(out, record["name"], staging)
                except OSError as err:
                    shutil.rmtree(staging, ignore_errors=True)
                    record = dict(record, status="failed", error=_one_line(f"cannot move the outputs into {out / record['name']} ({err})"))
            note(record)
    finally:
        manifest.close()
    return BatchResult(records=[records[c.name] for c in captures if c.name in records], seconds=time.perf_counter() - t0)


def write_index(out: Path, records: list[dict]) -> Path:
    """``OUT/index.html``: every capture's preview (input | all-in-focus | defocus) with its
    name, size, transfer and times; failures with their error line.  Relative links and inline
    CSS only, so the page opens offline (and from a copy of OUT)."""
    from ..io.writers import write_bytes

    cards = []
    for r in records:
        name = html.escape(r["name"])
        size = "x".join(str(v) for v in r.get("size_hw") or []) or "?"
        transfer = (r.get("transfer") or {}).get("used", "?")
        if r["status"] in ("done", "skipped"):
            seconds = (r.get("seconds") or {}).get("total")
            timing = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
            peak = r.get("peak_rss_mib")
            memory = f", peak {peak:.0f} MiB" if isinstance(peak, (int, float)) else ""
            href = html.escape(f"{r['name']}/preview.png", quote=True)
            cards.append(
                f'<figure><a href="{href}"><img src="{href}" alt="{name}: input, all-in-focus, defocus" loading="lazy"></a>'
                f"<figcaption><b>{name}</b> {size}, {transfer}, {timing}{memory}"
                f"{' (resumed)' if r['status'] == 'skipped' else ''}</figcaption></figure>"
            )
        else:
            cards.append(f'<figure class="failed"><figcaption><b>{name}</b> failed: {html.escape(r.get("error") or "")}'
                         "</figcaption></figure>")
    done = sum(r["status"] in ("done", "skipped") for r in records)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgedp batch: {html.escape(out.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
figure {{ margin: 0 0 1.2em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ccc; }}
figure.failed figcaption {{ color: #a00; }}
</style></head><body>
<h1>edgedp batch: {html.escape(out.name)}</h1>
<p>{done} of {len(records)} captures with outputs; each row: input | all-in-focus | defocus (px). Details: manifest.jsonl.</p>
{chr(10).join(cards)}
</body></html>
"""
    return write_bytes(out / INDEX_NAME, page.encode("utf-8"), overwrite=True)


def summary_rows(records: list[dict]) -> list[str]:
    """The summary table printed at the end of a batch, one string a row."""
    rows = [f"{'capture':<28} {'status':<8} {'size':>11} {'transfer':<8} {'fit s':>7} {'total s':>8} {'peak MiB':>9}  note"]
    for r in records:
        size = "x".join(str(v) for v in r.get("size_hw") or []) or "-"
        seconds = r.get("seconds") or {}
        fit = f"{seconds['fit']:.1f}" if isinstance(seconds.get("fit"), (int, float)) else "-"
        total = f"{seconds['total']:.1f}" if isinstance(seconds.get("total"), (int, float)) else "-"
        peak = f"{r['peak_rss_mib']:.0f}" if isinstance(r.get("peak_rss_mib"), (int, float)) else "-"
        transfer = (r.get("transfer") or {}).get("used", "-")
        note = r.get("error") or ("outputs complete (--resume)" if r["status"] == "skipped" else "")
        rows.append(f"{r['name'][:28]:<28} {r['status']:<8} {size:>11} {transfer:<8} {fit:>7} {total:>8} {peak:>9}  {note}")
    return rows


def batch_captures(inputs: list[str] | None, out: Path | None) -> tuple[list[Capture], list[str]]:
    """The captures of a batch and the discovery's warnings (:func:`edgedp.io.discovery.find_captures`
    of ``inputs``); InputError (one line) without a batch folder ``out`` or without inputs."""
    from ..io.discovery import find_captures

    if out is None:
        raise InputError("missing -o/--out: the batch folder to write into")
    if not inputs:
        raise InputError("no captures given: name folders of pairs, LEFT,RIGHT pairs or .txt lists")
    return find_captures(inputs)


def finished_captures(out: Path | str) -> int:
    """Captures of the batch in ``out`` whose last manifest record did not fail (what an
    interrupted batch completed)."""
    return sum(r["status"] != "failed" for r in read_manifest(out).values())


def grouped_warnings(records: list[dict]) -> list[str]:
    """The batch's warnings, one line per message: ``name: message`` for one capture, else
    ``message (name, name, ...)`` with the first five names."""
    grouped: dict[str, list[str]] = {}
    for record in records:
        for message in record.get("warnings") or []:
            grouped.setdefault(message, []).append(record["name"])
    lines = []
    for message, names in grouped.items():
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        lines.append(f"{message} ({shown})" if len(names) > 1 else f"{names[0]}: {message}")
    return lines


def status_counts(records: list[dict]) -> dict[str, int]:
    """How many records are ``done``, ``failed`` and ``skipped``."""
    return {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "skipped")}


def summary_line(result: BatchResult, config: BatchConfig) -> str:
    """The last line of a batch: the counts, the wall time, the rate of fitted captures and where
    the manifest and the gallery are."""
    counts = status_counts(result.records)
    fitted = counts["done"]
    rate = f", {fitted / result.seconds * 60:.2f} captures/min" if fitted and result.seconds > 0 else ""
    out = Path(config.out)
    return (f"batch    {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in {result.seconds:.1f} s"
            f"{rate} ({config.backend}, {config.jobs} job(s)); wrote {out / MANIFEST_NAME}, {out / INDEX_NAME}")
