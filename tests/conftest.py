"""Shared test fixtures. Tests run offline, headless and on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# CI runs the fast tests a second time with another thread count (and ATEN_CPU_CAPABILITY=default), so
# that a training test which holds only for one float reduction order fails before it lands (.ci/run).
TEST_THREADS = int(os.environ.get("DRIVEDISTILL_TEST_THREADS", "0") or 0)


def pytest_configure(config: pytest.Config) -> None:
    if TEST_THREADS > 0:
        import torch

        torch.set_num_threads(TEST_THREADS)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout (real Argoverse 2 / nuScenes excerpts)."""
    if not SHARED_DATA.exists():
        pytest.skip(
            f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the checkout)"
        )
    return SHARED_DATA
