from __future__ import annotations

from pathlib import Path

import pytest

# ../shared beside the checkout holds public traces; absent on a fresh clone.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"


@pytest.fixture
def shared_traces() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared traces not present at {SHARED_DATA} (only in the development environment)")
    return SHARED_DATA
