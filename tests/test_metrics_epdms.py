"""EPDMS (NAVSIM v2): one hand-made scene per sub-metric that flips it, the human filter, extended comfort,
the two-stage aggregation, metric-cache semantics and malformed scene files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drivedistill.geometry.metric_scene import MetricScene, read_scenes, save_scenes
from drivedistill.metrics.pdms import PDMSConfig, score_plans
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene

V2 = PDMSConfig(protocol="navsim-v2")
ONE = {"epdms": 1.0, "nc": 1.0, "dac": 1.0, "ddc": 1.0, "tlc": 1.0, "ep": 1.0, "ttc": 1.0, "lk": 1.0}


def v2(
    scene: MetricScene, plan: np.ndarray, reference: np.ndarray | None = None, cfg: PDMSConfig = V2
) -> dict:
    """Scores of one plan; the reference defaults to the plan itself (EP = 1 unless the test is about EP)."""
    ref = plan if reference is None else reference
    out = score_plans([scene], [plan], cfg, references={scene.token: ref}).to_json()
    assert out["protocol"] == "navsim-v2" and not out["failures"], out["failures"]
    return {**out["scenes"][scene.token], "filtered": out["human_filter"].get(scene.token, [])}


def test_protocol_names_every_result() -> None:
    scene = straight_road_scene(speed=10.0, speed_limit=9.0)
    out = score_plans([scene], [scene.human_future], V2).to_json()
    assert out["score_key"] == "epdms" and "epdms[navsim-v2]" in out["headline"]
    old = score_plans([scene], [scene.human_future]).to_json()
    assert old["protocol"] == "navsim-v1.1" and "pdms[navsim-v1.1]" in old["headline"]
    with pytest.raises(ValueError, match="navsim-v2"):
        PDMSConfig(protocol="navsim-v3")


def test_empty_road_scores_one() -> None:
    scene = straight_road_scene(speed=10.0, speed_limit=9.0)
    s = v2(scene, scene.human_future)
    assert {k: s[k] for k in ONE} == ONE and s["hc"] == 1.0 and s["ec"] == 1.0


def test_nc_flips_on_a_stopped_car() -> None:
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=25.0, y=0.0)])
    scene.human_future = straight_plan(10.0, accel=-6.0)  # the human stops in time: no filter
    assert v2(scene, straight_plan(10.0))["nc"] == 0.0
    assert v2(scene, straight_plan(10.0, accel=-6.0))["nc"] == 1.0


def test_dac_flips_off_road() -> None:
    scene = straight_road_scene(speed=10.0)
    t = np.arange(1, 9) * 0.5
    off = np.stack([10 * t, 2.5 * t**2, np.arctan(5 * t / 10)], -1)
    s = v2(scene, off)
    assert s["dac"] == 0.0 and s["epdms"] == 0.0
    assert v2(scene, straight_plan(10.0))["dac"] == 1.0


def test_ddc_flips_in_the_oncoming_lane_but_not_inside_an_intersection() -> None:
    scene = straight_road_scene(speed=10.0)
    oncoming = straight_plan(10.0, y=4.0)  # lane 1 is not on the route: 10 m per second of oncoming travel
    assert v2(scene, oncoming)["ddc"] == 0.0
    junction = dataclasses.replace(
        scene, intersection_polygons=[np.array([[-10.0, -2], [80, -2], [80, 6], [-10, 6]])]
    )
    assert v2(junction, oncoming)["ddc"] == 1.0  # v2 ignores oncoming progress inside intersections
    old = score_plans([junction], [oncoming], references={junction.token: oncoming}).to_json()
    assert old["scenes"][junction.token]["ddc"] == 0.0  # v1.1 does not


def _red_light_scene(red: bool) -> MetricScene:
    scene = straight_road_scene(speed=10.0)
    stop_area = np.array([[20.0, -2], [24, -2], [24, 2], [20, 2]])
    scene = dataclasses.replace(
        scene, red_light_polygons=[stop_area], red_light_valid=np.full((len(scene.agent_times), 1), red)
    )
    scene.human_future = straight_plan(10.0, accel=-6.0)  # the human stops before the line
    return scene


def test_tlc_flips_when_crossing_a_red_light() -> None:
    assert v2(_red_light_scene(True), straight_plan(10.0))["tlc"] == 0.0
    assert v2(_red_light_scene(True), straight_plan(10.0))["epdms"] == 0.0
    assert v2(_red_light_scene(False), straight_plan(10.0))["tlc"] == 1.0  # green
    assert v2(_red_light_scene(True), straight_plan(10.0, accel=-6.0))["tlc"] == 1.0  # stops before it


def test_ep_flips_with_progress_below_the_reference() -> None:
    scene = straight_road_scene(speed=10.0)
    s = v2(scene, straight_plan(10.0, accel=-2.5), reference=straight_plan(10.0))
    assert 0.4 < s["ep"] < 0.8
    assert v2(scene, straight_plan(10.0), reference=straight_plan(10.0))["ep"] == 1.0


def _follow_scene(gap: float) -> MetricScene:
    """The ego (12 m/s) brakes at 4 m/s² behind a stopped car whose rear is `gap` m beyond the stop point."""
    scene = straight_road_scene(speed=12.0, agents=[Agent(4.049 + 18.0 + gap + 2.25, 0.0)])
    scene.human_future = straight_plan(12.0, accel=-6.0)
    return scene


def test_ttc_flips_when_stopping_close_behind_a_car() -> None:
    close = v2(_follow_scene(3.0), straight_plan(12.0, accel=-4.0))
    assert close["ttc"] == 0.0 and close["nc"] == 1.0
    assert close["epdms"] == pytest.approx(11 / 16)  # (5·EP + 0 + 2·LK + 2·HC + 2·EC) / 16
    assert v2(_follow_scene(6.0), straight_plan(12.0, accel=-4.0))["ttc"] == 1.0


def test_lk_flips_after_2_s_off_the_centerline_except_in_intersections() -> None:
    scene = straight_road_scene(speed=10.0)
    assert v2(scene, straight_plan(10.0, y=1.0))["lk"] == 0.0
    assert v2(scene, straight_plan(10.0, y=0.3))["lk"] == 1.0
    junction = dataclasses.replace(
        scene, intersection_polygons=[np.array([[-10.0, -2], [80, -2], [80, 6], [-10, 6]])]
    )
    assert v2(junction, straight_plan(10.0, y=1.0))["lk"] == 1.0


def _with_history(scene: MetricScene, accel: float) -> MetricScene:
    """1.5 s of logged past driving at the scene speed with longitudinal acceleration `accel`."""
    t = np.arange(-15, 1) * 0.1
    v = float(scene.ego_dynamics[0])
    hist = np.zeros((len(t), 7))
    hist[:, 0] = v * t
    hist[:, 3] = v
    hist[:, 4] = accel
    return dataclasses.replace(scene, ego_history=hist, ego_history_times=t)


def test_hc_flips_with_an_uncomfortable_history_and_is_one_without_history() -> None:
    scene = straight_road_scene(speed=10.0, speed_limit=9.0)
    plan = straight_plan(10.0)
    assert v2(_with_history(scene, 0.0), plan)["hc"] == 1.0
    assert v2(_with_history(scene, -8.0), plan)["hc"] == 0.0  # the past brakes at 8 m/s², the plan does not
    assert v2(scene, plan)["hc"] == 1.0  # no history: NAVSIM scores HC = 1


def test_ec_flips_when_consecutive_plans_disagree() -> None:
    prev = straight_road_scene(speed=10.0, token="t0")
    now = dataclasses.replace(straight_road_scene(speed=10.0, token="t1"), previous_token="t0")
    same = score_plans([prev, now], [straight_plan(10.0)] * 2, V2).to_json()
    assert same["scenes"]["t1"]["ec"] == 1.0 and same["ec_evaluated"] == 1
    brake = score_plans([prev, now], [straight_plan(10.0), straight_plan(10.0, accel=-3.0)], V2).to_json()
    assert brake["scenes"]["t1"]["ec"] == 0.0
    s = brake["scenes"]["t1"]
    multi = s["nc"] * s["dac"] * s["ddc"] * s["tlc"]
    assert s["epdms"] == pytest.approx(multi * (5 * s["ep"] + 5 * s["ttc"] + 2 * s["lk"] + 2 * s["hc"]) / 16)


def test_human_filter_lifts_a_penalty_the_human_also_takes() -> None:
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=25.0, y=0.0)])  # the human drives into it
    s = v2(scene, straight_plan(10.0))
    assert s["nc"] == 1.0 and "nc" in s["filtered"]
    off = v2(scene, straight_plan(10.0), cfg=dataclasses.replace(V2, human_filter=False))
    assert off["nc"] == 0.0 and off["epdms"] == 0.0
    # the human stops: nothing to lift, the agent's collision counts
    scene.human_future = straight_plan(10.0, accel=-6.0)
    assert v2(scene, straight_plan(10.0))["nc"] == 0.0


def test_two_stage_aggregation_weights_follow_ups_by_distance_to_the_first_stage_end() -> None:
    plan = straight_plan(10.0)
    first = straight_road_scene(speed=10.0, speed_limit=9.0, token="a")
    end = score_plans([first], [plan], V2, references={"a": plan}).scenes[0].endpoint

    def follow_up(token: str, start_x: float, agents: list[Agent]) -> MetricScene:
        out = dataclasses.replace(
            straight_road_scene(speed=10.0, token=token, agents=agents), parent_token="a"
        )
        out.ego_pose[:2] = (start_x, end[1])  # in the parent's scoring frame
        out.human_future = straight_plan(10.0, accel=-6.0)
        return out

    near = follow_up("a-near", end[0], [Agent(x=end[0] + 25.0, y=0.0)])  # starts at the end; a crash ahead
    far = follow_up("a-far", end[0] + 1.0, [])  # 1 m away: weight ∝ exp(−1 / 0.2)
    refs = {"a": plan, "a-near": plan, "a-far": plan}
    out = score_plans([first, near, far], [plan] * 3, V2, references=refs).to_json()
    s_near, s_far = out["scenes"]["a-near"]["epdms"], out["scenes"]["a-far"]["epdms"]
    assert s_near == 0.0 and s_far == 1.0
    w = np.array([1.0, np.exp(-1.0 / 0.2)])
    w /= w.sum()
    two = out["two_stage"]
    assert two["stage2"]["epdms"] == pytest.approx(w[0] * s_near + w[1] * s_far)
    assert two["mean"]["epdms"] == pytest.approx(out["scenes"]["a"]["epdms"] * two["stage2"]["epdms"])
    assert out["num_scenes"] == 1  # follow-ups enter only through the two-stage score


def test_late_ttc_needs_the_cache_horizon_beyond_4_s() -> None:
    """v1.1 checks TTC on all 41 steps with look-ahead to 4.9 s: a car reached only then is a violation
    when the agents are cached to 5 s, and invisible when they stop at 4 s."""
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=52.0, y=0.0, speed=0.0)])
    scene.human_future = straight_plan(10.0, accel=-6.0)
    plan = straight_plan(10.0)  # front bumper at 44 m at 4 s, 53 m projected 0.9 s ahead
    full = score_plans([scene], [plan], references={scene.token: plan}).to_json()["scenes"][scene.token]
    k = 9  # agent samples 0 … 4 s
    cut = dataclasses.replace(
        scene,
        agent_times=scene.agent_times[:k],
        agent_poses=scene.agent_poses[:k],
        agent_velocities=scene.agent_velocities[:k],
        agent_valid=scene.agent_valid[:k],
        red_light_valid=None,
    )
    short = score_plans([cut], [plan], references={cut.token: plan}).to_json()["scenes"][cut.token]
    assert full["nc"] == 1.0 and full["ttc"] == 0.0
    assert short["ttc"] == 1.0


def test_partial_tracks_and_gaps_only_count_where_observed() -> None:
    """A stopped car on the path (contact 1.9 … 2.8 s) counts only where its track is observed: a track
    that ends at 1.5 s, or a gap over 1.5 … 2.5 s (no box between the 1 s and 3 s samples), is no collision;
    a gap elsewhere changes nothing."""
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=25.0, y=0.0)])
    scene.human_future = straight_plan(10.0, accel=-6.0)
    plan = straight_plan(10.0)
    assert v2(scene, plan)["nc"] == 0.0

    def masked(rows: slice) -> MetricScene:
        out = dataclasses.replace(scene, agent_valid=scene.agent_valid.copy(), red_light_valid=None)
        out.agent_valid[rows, 0] = False
        return out

    assert v2(masked(slice(4, None)), plan)["nc"] == 1.0  # partial track: last seen at 1.5 s
    assert v2(masked(slice(3, 6)), plan)["nc"] == 1.0  # gap over the contact
    assert v2(masked(slice(8, 10)), plan)["nc"] == 0.0  # gap after it


def test_malformed_scene_files_are_counted_failures(tmp_path) -> None:
    good = straight_road_scene(speed=10.0, token="good")
    save_scenes([good], tmp_path)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with np.load(tmp_path / "good.npz") as z:
        data = {k: z[k] for k in z.files if k != "route"}
    np.savez(tmp_path / "noroute.npz", **data)
    scenes, failures = read_scenes(tmp_path)
    assert [s.token for s in scenes] == ["good"]
    reasons = dict(failures)
    assert set(reasons) == {"garbage", "noroute"} and "route" in reasons["noroute"]
    out = score_plans(scenes, [good.human_future], V2, failures=failures).to_json()
    assert out["num_scenes"] == 3 and out["num_scored"] == 1
    assert out["epdms_failures_as_zero"] == pytest.approx(out["mean"]["epdms"] / 3)


def test_files_without_the_v2_fields_load_with_defaults(tmp_path) -> None:
    scene = straight_road_scene(speed=10.0, token="old")
    save_scenes([scene], tmp_path)
    new_keys = ("ego_history", "ego_history_times", "red_light_vertices", "red_light_offsets")
    new_keys += ("red_light_valid", "previous_token", "parent_token")
    with np.load(tmp_path / "old.npz") as z:
        data = {k: z[k] for k in z.files if k not in new_keys}
    np.savez(tmp_path / "old.npz", **data)
    loaded, failures = read_scenes(tmp_path)
    assert not failures and loaded[0].ego_history.shape == (0, 7) and loaded[0].red_light_polygons == []
    roundtrip = dataclasses.replace(_red_light_scene(True), token="rt", previous_token="old")
    save_scenes([roundtrip], tmp_path)
    back = MetricScene.load(tmp_path / "rt.npz")
    assert back.previous_token == "old" and back.red_light_valid.all() and len(back.red_light_polygons) == 1


def test_plan_scoring_of_project_scenes_names_the_protocol() -> None:
    from drivedistill.metrics.plans import PlanMetricsConfig, score_scene_plans
    from drivedistill.testing import random_scene

    scenes = [random_scene(seed=3, num_agents=2)]
    plans = np.stack([s.privileged.future_trajectory for s in scenes])
    for protocol, key in (("navsim-v1.1", "pdms"), ("navsim-v2", "epdms")):
        cfg = PlanMetricsConfig(openloop=False, pdms_protocol=protocol)
        out = score_scene_plans(plans, scenes, cfg)["pdms"]
        assert out["protocol"] == protocol and f"{key}[{protocol}]" in out["headline"]
        assert out["num_scenes"] == 1
