"""All-or-nothing writes of edgedp: the runtime's :mod:`edgedp_runtime.atomic` (one code for
both packages, standard library only) with edgedp's one-line :class:`~edgedp.errors.OutputError`.

Why: a kill, a full disk or a crash while a profile, an export or a fit folder is written must
leave the previous result complete and usable.  A file is written to a temporary file beside it
and renamed over it (:func:`atomic_writer` in :mod:`edgedp.io.writers`); a folder of files is
written into a staging folder beside it and swapped in by two renames (:func:`folder_writer`);
:func:`recover_output` repairs what a killed writer left (runs before every write and read).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from edgedp_runtime.atomic import PAUSE_ENV, atomic_file, pause_point, recover, staging_folder, swap_in

from ..errors import OutputError

__all__ = ["PAUSE_ENV", "atomic_file", "folder_writer", "pause_point", "recover_output"]


def recover_output(out: Path | str) -> str | None:
    """:func:`edgedp_runtime.atomic.recover` for ``out``: an interrupted swap is undone, dead
    writers' staging folders and temporary files are removed.  Returns a one-line note or None.

    Example:
        >>> import tempfile
        >>> parent = Path(tempfile.mkdtemp())
        >>> (parent / ".out.old-999999999-ab").mkdir()  # a swap killed between its renames
        >>> recover_output(parent / "out").endswith("(an earlier write was interrupted)"), (parent / "out").is_dir()
        (True, True)
    """
    return recover(out)


@contextlib.contextmanager
def folder_writer(out: Path | str, *, keep: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Write the folder ``out`` all or nothing: yields an empty staging folder beside ``out``;
    when the ``with`` block ends without an exception the staging folder becomes ``out``
    (:func:`edgedp_runtime.atomic.swap_in`; entries of the old ``out`` that ``keep(name)``
    accepts are carried over), else it is removed and ``out`` is as it was.

    Raises:
        OutputError: ``out`` is a file, its folder cannot be created, or a rename failed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    recover(out)
    parent = Path(os.path.abspath(out)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(out)
    except OSError as err:
        raise OutputError(f"cannot write into {parent} ({err.strerror or err})") from None
    try:
        yield staging
        try:
            was_cwd = os.getcwd() == os.path.abspath(out)
            swap_in(staging, out, keep)
        except OSError as err:
            raise OutputError(f"cannot move the new outputs into {out} ({err.strerror or err})") from None
        if was_cwd:
            os.chdir(out)  # the process stood in the folder that was swapped out
    finally:
        shutil.rmtree(staging, ignore_errors=True)
