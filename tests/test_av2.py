"""Argoverse 2 log excerpts → MetricScenes, and log-replay PDMS (real data in ../shared/data)."""

from __future__ import annotations

import itertools
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


# ----- the Source interface over every AV2 format in ../shared/data/argoverse2 ------------------------
def _source(name: str, **kw):  # type: ignore[no-untyped-def]
    return registry.build("source", name, registry.get("source", name).config_cls(**kw))


@pytest.mark.parametrize(
    ("log", "annotations"),
    [(LOG, "annotations.feather"), ("3b3570b4-7b0b-3268-a571-b0889dbf40b6", "annotations_with_ego.feather")],
)
def test_scenes_and_metric_scenes_come_from_the_same_records(log: str, annotations: str) -> None:
    from drivedistill.types import Command

    assert (ROOT / log / annotations).exists()
    source = _source("av2", root=str(ROOT), logs=[log])
    records = source.load(log)
    scenes, metric = source.scenes_of(records), source.metric_scenes_of(records)
    assert len(scenes) == len(metric) >= 18
    for s, m in zip(scenes, metric):
        assert s.token == m.token and s.episode == log
        assert np.allclose(s.privileged.future_trajectory, m.human_future, atol=1e-5)
        assert np.allclose(s.agent_input.ego_status, m.ego_dynamics[[0, 1, 3]], atol=1e-5)
        k = s.privileged.agents.shape[0]
        assert np.array_equal(s.privileged.agents_valid, m.agent_valid[:k])
        # no sweep in the excerpts: the students' LiDAR BEV is an absent (zero) sensor, the labelled
        # raster (drivable area + boxes) is privileged only
        assert s.meta["absent"] == ["camera", "lidar_bev"] and s.agent_input.bev.shape == (128, 128, 2)
        assert not s.agent_input.bev.any()
        assert s.privileged.labelled_bev is not None and s.privileged.labelled_bev[..., 0].any()
        assert s.agent_input.command in {int(c) for c in Command}
    assert scenes[-1].meta["history_padded"] == 0
    for prev, cur in itertools.pairwise(scenes):  # 0.5 s apart: history[-1] = inverse of prev future[0]
        x, y, yaw = (float(v) for v in prev.privileged.future_trajectory[0])
        c, s_ = np.cos(yaw), np.sin(yaw)
        inverse = np.array([-(c * x + s_ * y), s_ * x - c * y, -yaw])
        assert np.allclose(cur.agent_input.ego_history[-1], inverse, atol=1e-3)
    assert "EGO_VEHICLE" not in " ".join(metric[0].agent_ids)


def test_calibration_and_ground_height_are_read() -> None:
    from drivedistill.data.sources.av2 import project_to_camera

    source = _source("av2", root=str(ROOT), logs=[LOG])
    records = source.load(LOG)
    cam = records.cameras["ring_front_center"]
    assert cam["size"] == (2048, 1550)
    ahead = np.array([[20.0, 0.0, 1.0], [-20.0, 0.0, 1.0]])  # 20 m ahead / behind the rear axle
    uv, visible = project_to_camera(ahead, cam)
    assert visible.tolist() == [True, False] and abs(uv[0, 0] - cam["K"][0, 2]) < 50
    heights = [s.meta["ego_height_above_ground"] for s in source.scenes_of(records)]
    assert all(h is not None and -1.0 < h < 1.0 for h in heights)  # the ego frame sits on the ground


def test_forecasting_scenario_is_a_source_too() -> None:
    root = ROOT / "forecasting_scenarios"
    source = _source("av2_forecasting", root=str(root))
    (scenario,) = source.episodes()
    records = source.load(scenario)
    scenes, metric = source.scenes_of(records), source.metric_scenes_of(records)
    assert len(scenes) == len(metric) == 10  # t0 = 2.0 … 6.5 s, each with 2 s history and 4 s future
    assert all(s.meta["history_padded"] == 0 for s in scenes)
    assert metric[0].agent_poses.shape[1] > 20
    human = score_plans(metric, [m.human_future for m in metric]).to_json()
    assert human["failures"] == [] and human["mean"]["nc"] == 1.0 and human["mean"]["dac"] == 1.0


def test_collect_and_eval_pdms_with_source_av2(tmp_path: Path) -> None:
    from drivedistill.cli import main as cli
    from drivedistill.data.store import SceneStore

    root = ROOT / "forecasting_scenarios"
    out = tmp_path / "store"
    assert (
        cli(
            [
                "collect",
                "--source",
                "av2_forecasting",
                "--root",
                str(root),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert SceneStore(out).validate(deep=True) == [] and len(SceneStore(out)) == 10
    assert cli(["collect", "--source", "av2", "--version", "v1", "--out", str(tmp_path / "x")]) == 2
    report = tmp_path / "pdms.json"
    args = ["eval", "pdms", "--source", "av2_forecasting", "--root", str(root), "--planner", "human"]
    assert cli([*args, "--json", str(report)]) == 0
    assert report.exists()
