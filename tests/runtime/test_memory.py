"""edgedp_runtime.memory: the --max-memory budget and its default."""

from __future__ import annotations

import pytest

from edgedp_runtime import memory
from edgedp_runtime.memory import GIB, MemoryBudget, memory_budget


def test_a_given_budget_is_checked_in_one_line():
    assert memory_budget(2).bytes == 2 * GIB and memory_budget("1.5").bytes == int(1.5 * GIB)
    assert memory_budget("3").source == "--max-memory 3" and memory_budget(3).report()["gib"] == 3.0
    for bad, needle in (("lots", "expected a number of GiB"), ("nan", "finite"), ("0.1", "at least 0.5 GiB"),
                        (0.1, "at least 0.5 GiB"), (10**6, "more than this machine's")):
        with pytest.raises(ValueError, match=needle) as err:
            memory_budget(bad)
        assert "\n" not in str(err.value) and str(err.value).startswith("--max-memory")


def test_default_is_a_capped_share_of_the_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * GIB)
    budget = memory_budget(None)
    assert budget.bytes == int(0.6 * 10 * GIB) and "0.6 x 10.0 GiB available" in budget.source
    monkeypatch.setattr(memory, "available_memory", lambda: 100 * GIB)
    assert memory_budget(None).bytes == memory.DEFAULT_CAP and "(capped)" in memory_budget(None).source
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert memory_budget(None).bytes == memory.FALLBACK_BUDGET
    assert isinstance(memory_budget(None), MemoryBudget)


def test_available_and_total_memory_are_read():
    total, available = memory.total_memory(), memory.available_memory()
    assert total is not None and available is not None and 0 < available <= total
