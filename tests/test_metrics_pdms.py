"""PDMS v1.1 on hand-made scenes with unambiguous outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from drivedistill.metrics.pdms import score_plans, score_proposals
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene
from drivedistill.types import AgentClass


def one(scene, plan, reference=None):
    out = score_proposals(scene, plan[None], reference=reference)
    return {k: float(getattr(out, k)[0]) for k in ("pdms", "nc", "dac", "ddc", "ttc", "ep", "c")}, out


def test_keep_lane_on_empty_road_scores_one() -> None:
    scene = straight_road_scene(speed=10.0, speed_limit=9.0)  # PDM-Closed drives ≤ 9 m/s: the human leads EP
    scores, _ = one(scene, scene.human_future)
    assert scores == {k: 1.0 for k in scores}


def test_leaving_the_road_fails_dac() -> None:
    scene = straight_road_scene(speed=10.0)
    t = np.arange(1, 9) * 0.5
    plan = np.stack([10 * t, 2.5 * t**2, np.arctan(5 * t / 10)], -1)  # swerves left off the road (y > 6 m)
    scores, _ = one(scene, plan)
    assert scores["dac"] == 0.0 and scores["pdms"] == 0.0


def test_driving_into_a_stopped_car_fails_nc() -> None:
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=25.0, y=0.0)])
    scores, _ = one(scene, straight_plan(10.0))
    assert scores["nc"] == 0.0 and scores["pdms"] == 0.0


def test_rear_ended_while_stopped_is_not_at_fault() -> None:
    scene = straight_road_scene(speed=0.0, agents=[Agent(x=-25.0, y=0.0, speed=10.0)])
    scores, _ = one(scene, np.zeros((8, 3)))
    assert scores["nc"] == 1.0


def test_hitting_a_static_object_gives_half() -> None:
    cone = Agent(x=25.0, y=0.0, cls=AgentClass.STATIC, length=0.5, width=0.5)
    scene = straight_road_scene(speed=10.0, agents=[cone])
    scores, _ = one(scene, straight_plan(10.0))
    assert scores["nc"] == 0.5


def test_braking_at_6_mps2_is_uncomfortable_and_gentle_braking_is_not() -> None:
    scene = straight_road_scene(speed=24.0)
    hard, _ = one(scene, straight_plan(24.0, accel=-6.0))
    soft, _ = one(scene, straight_plan(24.0, accel=-1.0))
    assert hard["c"] == 0.0
    assert soft["c"] == 1.0


def test_ep_is_the_progress_ratio_to_pdm_closed() -> None:
    scene = straight_road_scene(speed=10.0)
    reference = straight_plan(10.0)
    scores, out = one(scene, straight_plan(10.0, accel=-2.5), reference=reference)
    assert out.reference_progress > 35.0
    assert scores["ep"] == pytest.approx(out.progress[0] / out.reference_progress)
    assert 0.4 < scores["ep"] < 0.8


def test_ep_is_one_when_nobody_progresses_5_m() -> None:
    scene = straight_road_scene(speed=0.0)
    scores, out = one(scene, np.zeros((8, 3)), reference=np.zeros((8, 3)))
    assert out.reference_progress < 5.0 and scores["ep"] == 1.0


def test_nan_and_bad_shapes_are_reported_failures() -> None:
    scenes = [straight_road_scene(token=f"s{i}") for i in range(3)]
    nan_plan = straight_plan(10.0)
    nan_plan[3, 0] = np.nan
    report = score_plans(scenes, [scenes[0].human_future, nan_plan, np.zeros((8, 2))])
    out = report.to_json()
    assert out["num_scenes"] == 3 and out["num_scored"] == 1
    reasons = {f["token"]: f["reason"] for f in out["failures"]}
    assert "NaN" in reasons["s1"] and "shape" in reasons["s2"]
    assert set(out["scenes"]) == {"s0"}


def test_mean_is_the_mean_of_per_scene_scores() -> None:
    scenes = [
        straight_road_scene(speed_limit=9.0, token="ok"),
        straight_road_scene(agents=[Agent(25, 0)], token="crash"),
    ]
    report = score_plans(scenes, [s.human_future for s in scenes])
    out = report.to_json()
    assert out["scenes"]["ok"]["pdms"] == 1.0 and out["scenes"]["crash"]["pdms"] == 0.0
    assert out["mean"]["pdms"] == pytest.approx(0.5)
    assert out["protocol"] == "navsim-v1.1"


def test_scores_many_proposals_in_one_batch() -> None:
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=40.0, y=0.0)])
    proposals = np.stack([straight_plan(10.0), straight_plan(10.0, accel=-3.0), straight_plan(10.0, y=4.0)])
    out = score_proposals(scene, proposals)
    assert out.nc.tolist()[0] == 0.0  # ploughs into the stopped car at 40 m
    assert out.nc[1] == 1.0  # stops before it
    assert out.pdms.shape == (3,)
