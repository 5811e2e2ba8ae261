"""All-or-nothing writes, shared by edgedp and the runtime (standard library only).

Why: a write interrupted by a kill, a full disk or a crash must never leave a half-written file
or a folder that mixes old and new files.  So every writer goes through this module:

* **one file** (:func:`atomic_file`): written to a temporary file in the target's folder
  (``.NAME.<pid>-<hex>.tmp``), flushed and ``fsync``-ed, then ``os.replace``-d over the target
  (atomic on POSIX), and the folder ``fsync``-ed.  A reader sees the old file or the new one.
* **a folder of files** (:func:`staging_folder`, :func:`swap_in`): everything is written into a
  staging folder beside OUT (``.OUT.<pid>-<hex>.partial``); when it is complete, OUT is renamed
  aside (``.OUT.old-<pid>-<hex>``), the staging folder renamed to OUT, and the old one deleted.
  Between the two renames OUT is missing for an instant; every other moment a reader sees the
  old complete folder or the new complete one.
* **recovery** (:func:`recover`), run by every writer and reader of OUT before it looks at it:
  a kill between the two renames leaves no OUT and a ``.OUT.old-*``: it is renamed back.  A
  ``.OUT.old-*`` beside an existing OUT (killed before the delete), ``.partial`` staging
  folders and ``.OUT.*.tmp`` temporary files are removed -- only when the process that made them (the pid in the name) is dead,
  so a running writer's staging is never touched.

Fault injection for tests: with ``EDGEDP_TEST_PAUSE_AT=<point>`` (comma-separated points) a
writer reaching that point prints ``EDGEDP_PAUSED <point>`` on stderr and sleeps, so a test can
kill it there (:func:`pause_point`).  Points: ``atomic-open`` (temporary file created, empty),
``atomic-written`` (data written, not yet renamed), ``staging-done`` (staging folder complete,
not yet swapped), ``swap-aside`` (old OUT renamed aside, new not yet in), ``swap-done`` (new OUT in
place, old not yet deleted).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = [
    "PAUSE_ENV",
    "atomic_file",
    "atomic_write_bytes",
    "owner_alive",
    "pause_point",
    "recover",
    "staging_folder",
    "swap_in",
]

#: The environment variable of the test hook (:func:`pause_point`).
PAUSE_ENV = "EDGEDP_TEST_PAUSE_AT"
_PAUSED: set[str] = set()
_OWNER = re.compile(r"^(\d+)-[0-9a-f]+$")
#: The random part of the staging folders older versions made (``tempfile.mkdtemp``).
_LEGACY = re.compile(r"^[a-z0-9_]{8}$")


def pause_point(name: str) -> None:
    """Test hook: when ``name`` is listed in ``$EDGEDP_TEST_PAUSE_AT``, print ``EDGEDP_PAUSED
    <name>`` on stderr and sleep (up to 10 minutes), the first time only, so a test can kill the
    process exactly there.  Costs one environment lookup otherwise."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name in _PAUSED or name not in {p.strip() for p in wanted.split(",")}:
        return
    _PAUSED.add(name)
    print(f"EDGEDP_PAUSED {name}", file=sys.stderr, flush=True)
    time.sleep(600)


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:10]}"


def owner_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a reused pid counts as alive: the safe
    side, the leftover is removed by a later run)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes ``path`` only when the ``with`` block ends without
    an exception (module docstring).  The temporary file is removed on any failure.  Raises the
    ``OSError`` of a failed create / write / rename (callers turn it into their one-line error);
    the folder must exist."""
    path = Path(path)
    temp = path.parent / f".{path.name}.{_tag()}.tmp"
    # os.open with mode 0o666 lets the umask decide permissions, as a plain open() does.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            pause_point("atomic-open")
            yield handle
            handle.flush()
            pause_point("atomic-written")
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_file`."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def _owner(name: str, prefix: str, suffix: str) -> int | None:
    """The pid in a leftover's name ``<prefix><pid>-<hex><suffix>``; 0 for an older version's
    staging name without one (treated as dead), None when the name is not such a leftover
    (e.g. another output's whose name starts the same way)."""
    if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
        return None
    middle = name[len(prefix): len(name) - len(suffix)]
    match = _OWNER.match(middle)
    if match:
        return int(match.group(1))
    return 0 if suffix == ".partial" and _LEGACY.match(middle) else None


def _partial_prefix(out: Path) -> str:
    return f".{out.name}."


def _old_prefix(out: Path) -> str:
    return f".{out.name}.old-"


def staging_folder(out: Path | str) -> Path:
    """Create and return an empty staging folder for ``out`` beside it,
    ``.OUT.<pid>-<hex>.partial`` (the parent must exist).  Raises OSError."""
    out = Path(os.path.abspath(out))
    staging = out.parent / f"{_partial_prefix(out)}{_tag()}.partial"
    staging.mkdir()
    return staging


def recover(out: Path | str) -> str | None:
    """Repair what a killed writer of ``out`` left (module docstring); returns a one-line note
    of what was done, or None.  Leftovers of live processes are not touched; errors are
    ignored (a later run tries again)."""
    out = Path(os.path.abspath(out))
    parent = out.parent
    try:
        entries = list(parent.iterdir())
    except OSError:
        return None
    olds: list[Path] = []
    partials: list[Path] = []
    for entry in entries:
        name = entry.name
        pid = _owner(name, _old_prefix(out), "")
        if pid is not None and entry.is_dir():
            if not owner_alive(pid):
                olds.append(entry)
            continue
        pid = _owner(name, _partial_prefix(out), ".partial")
        if pid is not None and entry.is_dir() and not owner_alive(pid):
            partials.append(entry)
            continue
        pid = _owner(name, _partial_prefix(out), ".tmp")  # atomic_file's temporary file
        if pid and entry.is_file() and not owner_alive(pid):
            with contextlib.suppress(OSError):
                entry.unlink()
    note = None
    if olds and not os.path.lexists(out):
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        try:
            os.rename(newest, out)
            olds.remove(newest)
            note = f"restored {out} from {newest.name} (an earlier write was interrupted)"
        except OSError:
            pass
    if os.path.lexists(out):
        for leftover in olds + partials:
            shutil.rmtree(leftover, ignore_errors=True)
    else:
        for leftover in partials:
            shutil.rmtree(leftover, ignore_errors=True)
    return note


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (a copy where linking fails)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=link)
    elif source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        link(str(source), str(target))


def swap_in(staging: Path | str, out: Path | str, keep: Callable[[str], bool] = lambda name: False) -> None:
    """Make the complete folder ``staging`` become ``out`` by renames (module docstring).

    Entries of the old ``out`` that ``staging`` lacks and ``keep(name)`` accepts (the user's own
    files in a folder edgedp writes into) are carried over first, as hard links, so the swap
    loses nothing of theirs.  Raises OSError; before the first rename ``out`` is untouched, and a
    failure of the second rename renames the old folder back."""
    staging, out = Path(os.path.abspath(staging)), Path(os.path.abspath(out))
    old = None
    if os.path.lexists(out):
        for entry in out.iterdir():
            if not os.path.lexists(staging / entry.name) and keep(entry.name):
                _link_tree(entry, staging / entry.name)
    _fsync_folder(staging)
    pause_point("staging-done")
    if os.path.lexists(out):
        old = out.parent / f"{_old_prefix(out)}{_tag()}"
        os.rename(out, old)
        pause_point("swap-aside")
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    _fsync_folder(out.parent)
    pause_point("swap-done")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
