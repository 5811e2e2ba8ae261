"""Shared fixtures.  Real Pixel 4 data lives outside the repo: $EDGEDP_PIXEL4, or ../shared/data/pixel4
beside the checkout (where CI puts it).  Tests that need it skip with that reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pixel4_dir() -> Path | None:
    env = os.environ.get("EDGEDP_PIXEL4")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "pixel4")
    for path in candidates:
        if (path / "001_left.png").is_file():
            return path
    return None


@pytest.fixture
def pixel4() -> Path:
    path = pixel4_dir()
    if path is None:
        pytest.skip("Pixel 4 data not found (set EDGEDP_PIXEL4 or place it at ../shared/data/pixel4)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests compare numbers; keep torch's thread count fixed so reductions are reproducible.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
