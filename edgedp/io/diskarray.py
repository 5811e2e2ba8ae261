"""Arrays that live in a file, written and read in pieces: the per-layer outputs of a tiled fit
too large for its memory budget (:mod:`edgedp.fit.tiling`).

A :class:`DiskArray` is a C-order array in a plain ``.npy`` file (``numpy.load`` reads it, also
with ``mmap_mode``).  Its pieces are written and read with ``os.pwrite`` / ``os.pread`` rather
than through a memory map, on purpose: the pages of a mapped file that a process touched count
in its resident set (``VmRSS``: ``RssFile``) until they are unmapped, so writing a 4 GB
latent map through ``numpy.memmap`` would show as 4 GB of peak RSS, while file writes only pass
through the kernel's page cache, which the kernel reclaims as it needs.

Conventions: the last two axes are image rows and columns; a block is a rectangle of them for
one index of the leading axes (or all of them).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["DiskArray", "scratch_folder"]

#: Bytes per piece when an array is read or copied whole (bounds the memory of a copy).
CHUNK_BYTES = 16 * 2**20


def scratch_folder(parent: Path | str | None = None) -> Path:
    """A new private folder for disk arrays (under ``parent``, default the system's temporary
    folder: ``TMPDIR``)."""
    return Path(tempfile.mkdtemp(prefix="edgedp-tiles-", dir=None if parent is None else str(parent)))


def _remove(path: str, fd: int, folder: str | None) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class DiskArray:
    """A ``shape`` / ``dtype`` array in the ``.npy`` file ``path`` (created, zero-filled sparse).

    The file is removed when the object is garbage-collected or :meth:`close` d, and with it
    ``owns_folder`` (a scratch folder made for it).  ``numpy.asarray(a)`` reads it whole.

    Args:
        path: the file to create (must not exist).
        shape: at least 2 axes, the last two rows and columns.
        dtype: any fixed-size numpy dtype.
    """

    def __init__(self, path: Path | str, shape: tuple[int, ...], dtype, *, owns_folder: Path | str | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 2:
            raise ValueError(f"a DiskArray needs rows and columns, got shape {self.shape}")
        self.dtype = np.dtype(dtype)
        header = io.BytesIO()  # numpy's own header writer
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        )
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.pwrite(fd, header.getvalue(), 0)
        self.offset = len(header.getvalue())
        self.fd = fd
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        os.ftruncate(fd, self.offset + self.nbytes)
        self._finalizer = weakref.finalize(self, _remove, str(self.path), fd, None if owns_folder is None else str(owns_folder))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def lead(self) -> tuple[int, ...]:
        """The leading axes (all but rows and columns)."""
        return self.shape[:-2]

    def close(self) -> None:
        """Remove the file now (the object is unusable afterwards)."""
        self._finalizer()

    def _row_offset(self, flat_lead: int, row: int, col: int) -> int:
        h, w = self.shape[-2:]
        return self.offset + ((flat_lead * h + row) * w + col) * self.dtype.itemsize

    def write(self, rows: tuple[int, int], cols: tuple[int, int], block: np.ndarray, lead: tuple[int, ...] = ()) -> None:
        """Store ``block`` at ``rows[0]:rows[1]``, ``cols[0]:cols[1]`` of the leading index
        ``lead`` (a prefix of the leading axes; the block holds the remaining ones)."""
        (r0, r1), (c0, c1) = rows, cols
        block = np.ascontiguousarray(block, dtype=self.dtype)
        rest = self.lead[len(lead):]
        if block.shape != rest + (r1 - r0, c1 - c0):
            raise ValueError(f"block {block.shape} does not fit rows {rows}, cols {cols} of {self.shape} at {lead}")
        h, w = self.shape[-2:]
        base = int(np.ravel_multi_index(lead, self.lead[: len(lead)])) if lead else 0
        count = int(np.prod(rest, dtype=np.int64)) if rest else 1
        pieces = block.reshape(count, r1 - r0, c1 - c0)
        for k in range(count):
            flat = base * count + k
            if c0 == 0 and c1 == w:  # whole rows: one contiguous run
                os.pwrite(self.fd, pieces[k].tobytes(), self._row_offset(flat, r0, 0))
                continue
            for r in range(r1 - r0):
                os.pwrite(self.fd, pieces[k, r].tobytes(), self._row_offset(flat, r0 + r, c0))

    def read_rows(self, flat_lead: int, rows: tuple[int, int]) -> np.ndarray:
        """Rows ``rows[0]:rows[1]`` (all columns) of the plane ``flat_lead`` (leading axes
        flattened): ``(r1 - r0, W)``."""
        r0, r1 = rows
        w = self.shape[-1]
        size = (r1 - r0) * w * self.dtype.itemsize
        data = os.pread(self.fd, size, self._row_offset(flat_lead, r0, 0))
        if len(data) != size:
            raise OSError(f"{self.path}: short read")
        return np.frombuffer(data, dtype=self.dtype).reshape(r1 - r0, w)

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The array in C order as consecutive pieces of at most ``max_bytes`` (at least one row)."""
        h, w = self.shape[-2:]
        planes = int(np.prod(self.lead, dtype=np.int64)) if self.lead else 1
        step = max(1, max_bytes // max(1, w * self.dtype.itemsize))
        for k in range(planes):
            for r0 in range(0, h, step):
                yield self.read_rows(k, (r0, min(h, r0 + step)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        flat = out.reshape(-1)
        at = 0
        for piece in self.chunks():
            flat[at : at + piece.size] = piece.reshape(-1)
            at += piece.size
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"DiskArray({self.path}, shape={self.shape}, dtype={self.dtype})"
