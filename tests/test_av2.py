"""Argoverse 2 log excerpts → MetricScenes, and log-replay PDMS (real data in ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivedistill import registry
from drivedistill.metrics.pdms import score_plans
from drivedistill.types import AgentClass

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "argoverse2"
LOG = "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"AV2 excerpts not found at {ROOT}")


@pytest.fixture(scope="module")
def scenes():
    source = registry.build(
        "source", "av2", registry.get("source", "av2").config_cls(root=str(ROOT), logs=[LOG])
    )
    return source.metric_scenes()


def test_scenes_are_cut_at_2hz_with_4s_of_future(scenes) -> None:
    assert 18 <= len(scenes) <= 26  # ~16 s logs, a scene every 0.5 s with 4 s of future
    s = scenes[5]
    assert s.agent_times[-1] == pytest.approx(5.0)
    assert np.allclose(s.ego_pose, 0.0)
    assert s.human_future[-1, 0] > 5.0  # the ego drives forward in its rear-axle frame
    assert s.lane_on_route.any() and len(s.route) > 10
    assert AgentClass.STATIC in set(s.agent_types.tolist())  # bollards / cones are static objects
    assert "EGO_VEHICLE" not in " ".join(s.agent_ids)


def test_logged_human_scores_high_and_constant_velocity_lower(scenes) -> None:
    subset = scenes[::4]
    human = score_plans(subset, [s.human_future for s in subset]).to_json()
    cv = score_plans(
        subset, [registry.build("planner", "constant_velocity").plan(s) for s in subset]
    ).to_json()
    assert human["failures"] == [] and human["mean"]["pdms"] >= 0.85
    assert human["mean"]["nc"] == 1.0 and human["mean"]["dac"] == 1.0
    assert cv["mean"]["pdms"] < human["mean"]["pdms"]
