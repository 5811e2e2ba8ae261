"""edgedp.io.diskarray: a .npy file written and read in pieces (the tiled fit's on-disk store)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from edgedp.io import DiskArray, scratch_folder


def test_pieces_round_trip_through_a_plain_npy_file(tmp_path):
    rng = np.random.default_rng(0)
    want = rng.random((3, 4, 37, 53)).astype(np.float32)
    a = DiskArray(tmp_path / "a.npy", want.shape, np.float16)
    assert a.shape == want.shape and a.ndim == 4 and a.lead == (3, 4) and a.dtype == np.float16
    assert a.nbytes == want.size * 2
    assert not np.asarray(a).any()  # created zero-filled
    # a partial block per (channel, layer), a whole-row block for a whole channel, a column strip
    a.write((5, 20), (7, 30), want[0, 1, 5:20, 7:30], (0, 1))
    a.write((0, 37), (0, 53), want[1], (1,))
    a.write((0, 37), (40, 53), want[2, :, :, 40:], (2,))
    got = np.asarray(a)
    assert got.dtype == np.float16 and got.shape == want.shape
    expect = np.zeros_like(want, dtype=np.float16)
    expect[0, 1, 5:20, 7:30] = want[0, 1, 5:20, 7:30]
    expect[1] = want[1]
    expect[2, :, :, 40:] = want[2, :, :, 40:]
    assert np.array_equal(got, expect)
    np.testing.assert_allclose(got[1].astype(np.float32), want[1], rtol=2**-11, atol=0)
    assert np.array_equal(np.asarray(a, dtype=np.float32), expect.astype(np.float32))
    # rows of one plane (leading axes flattened: (1, 2) is plane 1 * 4 + 2)
    assert np.array_equal(a.read_rows(6, (10, 13)), expect[1, 2, 10:13])
    # pieces in C order, at most max_bytes each (but at least one row)
    pieces = list(a.chunks(max_bytes=53 * 2 * 5))
    assert all(p.shape[0] <= 5 and p.shape[1] == 53 for p in pieces)
    assert np.array_equal(np.concatenate(pieces).reshape(want.shape), expect)
    # numpy reads the file as a plain .npy, also memory-mapped
    assert np.array_equal(np.load(a.path), expect)
    assert np.array_equal(np.load(a.path, mmap_mode="r")[1, 3], expect[1, 3])


def test_the_file_and_its_scratch_folder_go_with_the_array(tmp_path):
    folder = scratch_folder(tmp_path)
    assert folder.is_dir() and folder.parent == tmp_path
    first = DiskArray(folder / "a.npy", (2, 5, 7), np.float16, owns_folder=folder)
    second = DiskArray(folder / "b.npy", (5, 7), np.float32)
    path = second.path
    second.close()
    assert not path.exists() and folder.is_dir()
    path = first.path
    del first
    gc.collect()
    assert not path.exists() and not folder.exists()


def test_bad_shapes_and_blocks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="rows and columns"):
        DiskArray(tmp_path / "a.npy", (10,), np.float16)
    a = DiskArray(tmp_path / "b.npy", (2, 5, 7), np.float16)
    with pytest.raises(ValueError, match="does not fit"):
        a.write((0, 5), (0, 7), np.zeros((5, 6)), (0,))
    with pytest.raises(ValueError, match="does not fit"):
        a.write((0, 5), (0, 7), np.zeros((5, 7)))  # the leading axis is missing
    with pytest.raises(FileExistsError):  # never overwrites a file
        DiskArray(tmp_path / "b.npy", (2, 5, 7), np.float16)
