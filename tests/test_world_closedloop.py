"""Closed loop: the expert beats constant velocity; results carry the protocol; GIFs are written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from drivedistill.metrics.closedloop import (
    EXPERT,
    PROTOCOL,
    ClosedLoopConfig,
    constant_velocity,
    evaluate_closed_loop,
    route_progress,
)
from drivedistill.world.camera import CameraConfig
from drivedistill.world.config import WorldConfig


def test_route_progress_on_a_straight_line() -> None:
    route = np.stack([np.arange(0, 100, 2.0), np.zeros(50)], 1)
    poses = np.array([[10.0, 0.5, 0.0], [20.0, 0.0, 0.0], [30.0, -0.5, 0.0]])
    assert route_progress(poses, route) == pytest.approx(20.0)


@pytest.mark.slow
def test_closed_loop_expert_vs_constant_velocity(tmp_path: Path) -> None:
    world = WorldConfig(scenarios=["intersection"], camera=CameraConfig(height=32, width=64))
    cfg = ClosedLoopConfig(episodes=1, duration_s=8.0, seed=1000, world=world)
    seen = []

    def cv(inputs):  # type: ignore[no-untyped-def]
        seen.append(inputs)
        return constant_velocity(inputs)

    gif = tmp_path / "ep.gif"
    cv_result = evaluate_closed_loop(cv, cfg, gif=gif)
    expert = evaluate_closed_loop(EXPERT, cfg)
    assert cv_result.to_dict()["protocol"] == PROTOCOL == expert.protocol
    assert expert.collision_rate == 0.0 and expert.route_completion == pytest.approx(1.0)
    assert expert.driving_score >= cv_result.driving_score
    assert all(not hasattr(x, "privileged") for x in seen) and len(seen) >= 5
    assert gif.exists() and gif.stat().st_size > 1000
