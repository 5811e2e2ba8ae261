"""Reading a grid of DP kernel pairs (e.g. a calibration) from ``.npy`` files into a
:class:`edgedp.physics.kernel_field.KernelField` (``edgedp fit --kernels LEFT.npy RIGHT.npy``).

The files hold the left and the right kernels of a ``Pr x Pc`` grid over the frame, row-major from
the top-left: ``(P, K, K)`` with ``P = Pr * Pc`` or ``(Pr, Pc, K, K)``, K odd, behind the focal
plane (r > 0: the left kernel's mass on the left).  Each kernel is normalized to sum 1 and each
pair recentred (:func:`edgedp.physics.kernel_field.recentre_pair`) on reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["NEGATIVE_TOLERANCE", "load_kernel_grid"]

NEGATIVE_TOLERANCE = 1e-4
"""Negative entries down to this fraction of a kernel's peak are rounding (clipped to 0); below it
the file is refused."""


def _read(path: Path, side: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{side} kernels {path}: no such file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{side} kernels {path}: cannot read as .npy ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise InputError(f"{side} kernels {path}: not a numeric array")
    return array.astype(np.float64)


def load_kernel_grid(left_path: Path | str, right_path: Path | str, grid: tuple[int, int], *, source: str = "calibration"):
    """Read left/right kernel grids into a recentred ``KernelField`` (float32 pairs
    ``(Pr, Pc, 2, K, K)``, ``source`` as given).

    Args:
        left_path, right_path: ``.npy`` arrays ``(Pr * Pc, K, K)`` (row-major cells) or
            ``(Pr, Pc, K, K)``, K odd, non-negative, behind orientation.
        grid: ``(Pr, Pc)`` the cells the files must hold (``--patches``).

    Raises:
        InputError: one line naming the file, for a missing or unreadable file, shapes that
            differ between the two files or do not match ``grid``, an even or non-square K,
            NaN / inf, negative values beyond rounding (:data:`NEGATIVE_TOLERANCE` of the peak;
            smaller ones are clipped), a kernel with no mass, or a cell whose pair is not behind
            the focal plane (disparity <= 0: left and right swapped?).

    Example:
        >>> import tempfile, torch
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> pair = dp_kernel_pair(3.0).numpy()
        >>> folder = Path(tempfile.mkdtemp())
        >>> np.save(folder / "l.npy", np.stack([pair[0]] * 6)); np.save(folder / "r.npy", np.stack([pair[1]] * 6))
        >>> field = load_kernel_grid(folder / "l.npy", folder / "r.npy", (2, 3))
        >>> field.grid, field.size, field.source
        ((2, 3), 7, 'calibration')
    """
    import torch

    from ..physics.kernel_field import KernelField, recentre_pair

    pr, pc = (int(g) for g in grid)
    if pr < 1 or pc < 1:
        raise InputError(f"kernel grid {pr}x{pc}: rows and columns must be >= 1")
    left_path, right_path = Path(left_path), Path(right_path)
    raw = {"left": _read(left_path, "left"), "right": _read(right_path, "right")}
    if raw["left"].shape != raw["right"].shape:
        raise InputError(f"kernels {left_path} {raw['left'].shape} and {right_path} {raw['right'].shape} differ in shape")
    arrays = {}
    for side, path in (("left", left_path), ("right", right_path)):
        a = raw[side]
        if a.ndim == 4:
            if a.shape[:2] != (pr, pc):
                raise InputError(f"{side} kernels {path}: grid {a.shape[0]}x{a.shape[1]} does not match the asked {pr}x{pc} (--patches)")
            a = a.reshape(pr * pc, *a.shape[2:])
        elif a.ndim == 3:
            if a.shape[0] != pr * pc:
                raise InputError(f"{side} kernels {path}: {a.shape[0]} kernels, a {pr}x{pc} grid (--patches) needs {pr * pc}")
        else:
            raise InputError(f"{side} kernels {path}: shape {a.shape}, expected (P, K, K) or (Pr, Pc, K, K)")
        if a.shape[-1] != a.shape[-2] or a.shape[-1] % 2 != 1:
            raise InputError(f"{side} kernels {path}: kernels {a.shape[-2]}x{a.shape[-1]}, must be square with an odd size")
        if not np.isfinite(a).all():
            raise InputError(f"{side} kernels {path}: contains NaN or inf")
        peak = np.abs(a).max(axis=(-1, -2), keepdims=True)
        if (a < -NEGATIVE_TOLERANCE * peak).any():
            raise InputError(f"{side} kernels {path}: negative values (min {a.min():.3g}), a kernel must be non-negative")
        a = np.clip(a, 0.0, None)
        empty = np.nonzero(a.sum(axis=(-1, -2)) <= 0)[0]
        if empty.size:
            raise InputError(f"{side} kernels {path}: kernel {int(empty[0])} has no mass (all zero)")
        arrays[side] = a
    pairs = torch.from_numpy(np.stack([arrays["left"], arrays["right"]], axis=1)).reshape(pr, pc, 2, *arrays["left"].shape[-2:])
    pairs = recentre_pair(pairs).to(torch.float32)
    field = KernelField(pairs, source)
    disparity = field.disparity
    bad = torch.nonzero(disparity <= 0)
    if bad.numel():
        r, c = (int(v) for v in bad[0])
        raise InputError(f"kernels {left_path}, {right_path}: cell ({r}, {c}) has disparity {float(disparity[r, c]):+.2f} px; "
                         "kernels must be behind the focal plane (left kernel's mass on the left: left and right swapped?)")
    return field
