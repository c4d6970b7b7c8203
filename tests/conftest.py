"""Shared test set-up: small thread count (CI has 2 cores) and the location of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real published inputs beside the project's root; skips when a user's clone lacks them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it exists in CI and for developers, not in user clones)")
    return SHARED_DATA
