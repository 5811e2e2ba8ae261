"""The memory budget of a run (``--max-memory GiB``): what the machine has free, and its checks.

Standard library only (the device runtime and edgedp both use it: ``edgedp fit / tune / batch
--max-memory`` and ``edgedp-runtime instant --max-memory``).

Default budget: ``min(DEFAULT_FRACTION * available, DEFAULT_CAP)`` with ``available`` the
kernel's ``MemAvailable`` (``/proc/meminfo``: free memory plus what the page cache can give back
without swapping) -- not ``MemFree``, which counts the page cache as used.  A fraction, because
the estimate of what a run needs is an estimate and the machine is shared; a cap, because a
machine with 256 GiB free does not make a fit better by using it all.  Where ``/proc/meminfo``
does not exist (macOS, Windows), ``os.sysconf`` gives the free physical pages; failing that the
default is :data:`FALLBACK_BUDGET`.

A given budget must be a finite number of GiB in ``[MIN_BUDGET_GIB, total memory]``.
"""

from __future__ import annotations

import math
import os

__all__ = [
    "DEFAULT_CAP",
    "DEFAULT_FRACTION",
    "FALLBACK_BUDGET",
    "GIB",
    "MIN_BUDGET_GIB",
    "MemoryBudget",
    "available_memory",
    "default_budget",
    "memory_budget",
    "total_memory",
]

GIB = 2**30
#: Share of the available memory the default budget takes.
DEFAULT_FRACTION = 0.6
#: Upper end of the default budget (bytes).
DEFAULT_CAP = 16 * GIB
#: The default where the available memory cannot be read (bytes).
FALLBACK_BUDGET = 4 * GIB
#: The smallest budget accepted: below it the fixed costs (PyTorch / ONNX Runtime themselves, G_D,
#: one tile of the smallest useful size) do not fit.
MIN_BUDGET_GIB = 0.5


def _meminfo(key: str) -> int | None:
    """A ``/proc/meminfo`` entry in bytes (None where the file or the entry is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name == key:
                    parts = rest.split()
                    return int(parts[0]) * (1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf(pages: str) -> int | None:
    try:
        value = os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(value) if value > 0 else None


def available_memory() -> int | None:
    """Bytes the machine can give a new run now: ``MemAvailable``, else the free physical pages
    (``os.sysconf``), else None."""
    value = _meminfo("MemAvailable")
    return value if value is not None else _sysconf("SC_AVPHYS_PAGES")


def total_memory() -> int | None:
    """Physical memory in bytes (``MemTotal``, else ``os.sysconf``), or None."""
    value = _meminfo("MemTotal")
    return value if value is not None else _sysconf("SC_PHYS_PAGES")


class MemoryBudget:
    """A memory budget: ``bytes`` and where it came from (``source``: ``--max-memory`` or the
    default's reasoning), for report.json."""

    def __init__(self, nbytes: int, source: str) -> None:
        self.bytes = int(nbytes)
        self.source = source

    @property
    def gib(self) -> float:
        return self.bytes / GIB

    def report(self) -> dict:
        return {"bytes": self.bytes, "gib": round(self.gib, 3), "source": self.source}

    def __repr__(self) -> str:
        return f"MemoryBudget({self.gib:.2f} GiB, {self.source})"


def default_budget() -> MemoryBudget:
    """``min(0.6 * available, 16 GiB)`` (module docstring)."""
    available = available_memory()
    if available is None:
        return MemoryBudget(FALLBACK_BUDGET, f"default: {FALLBACK_BUDGET / GIB:g} GiB (free memory unknown)")
    value = min(int(DEFAULT_FRACTION * available), DEFAULT_CAP)
    capped = " (capped)" if value == DEFAULT_CAP else ""
    return MemoryBudget(value, f"default: {DEFAULT_FRACTION:g} x {available / GIB:.1f} GiB available{capped}")


def memory_budget(gib: float | str | None, what: str = "--max-memory") -> MemoryBudget:
    """The budget for ``gib`` GiB, or the default for None.

    Raises:
        ValueError: one line naming ``what``: not a number, not finite, below
            :data:`MIN_BUDGET_GIB` or above the machine's memory.
    """
    if gib is None:
        return default_budget()
    try:
        value = float(gib)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {gib!r}: expected a number of GiB, e.g. 6") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {gib}: must be a finite number of GiB")
    if value < MIN_BUDGET_GIB:
        raise ValueError(f"{what} {value:g}: at least {MIN_BUDGET_GIB:g} GiB is needed")
    total = total_memory()
    if total is not None and value * GIB > total:
        raise ValueError(f"{what} {value:g}: more than this machine's {total / GIB:.1f} GiB of memory")
    return MemoryBudget(int(value * GIB), f"{what} {value:g}")
