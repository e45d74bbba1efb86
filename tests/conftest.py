"""Shared test fixtures. Tests run offline, headless and on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout (real Argoverse 2 / nuScenes excerpts)."""
    if not SHARED_DATA.exists():
        pytest.skip(
            f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the checkout)"
        )
    return SHARED_DATA
