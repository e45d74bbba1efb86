"""PDM-Closed's agent forecast (`PDMClosedParams.forecast`) and `drivedistill eval pdms --store`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drivedistill.cli import main as cli
from drivedistill.config import to_dict
from drivedistill.data.store import SceneStore, SceneStoreWriter, shard_name, write_shard
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.metrics.pdms import PDMSConfig, score_plans
from drivedistill.sim.pdm_closed import PDMClosedParams, pdm_closed_plan
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene
from drivedistill.testing import random_scene
from drivedistill.world.config import WorldConfig


def braking_lead_scene() -> MetricScene:
    """Ego at 10 m/s in lane 0, speed limit 15 m/s; the lead 20 m ahead drives 10 m/s until 1 s, then
    brakes at 6 m/s² to a stop (logged at 2 Hz) — a brake no constant-velocity forecast from t = 0 sees.
    The logged human brakes at 3 m/s² (it breaks no rule, so v2's human filter lifts nothing)."""
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=20.0, y=0.0, speed=10.0)], speed_limit=15.0)
    t = scene.agent_times
    speed = np.clip(10.0 - 6.0 * np.clip(t - 1.0, 0.0, None), 0.0, None)
    x = 20.0 + np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(t))])
    poses, vel = scene.agent_poses.copy(), scene.agent_velocities.copy()
    poses[:, 0, 0], vel[:, 0, 0] = x, speed
    human = straight_plan(10.0, accel=-3.0)
    return replace(scene, agent_poses=poses, agent_velocities=vel, human_future=human, token="braking-lead")


@pytest.mark.parametrize("protocol", ["navsim-v1.1", "navsim-v2"])
def test_log_replay_forecast_sees_a_later_brake(protocol: str) -> None:
    scene = braking_lead_scene()
    out = {}
    for forecast in ("constant_velocity", "log_replay"):
        plan = pdm_closed_plan(scene, p=PDMClosedParams(selection=protocol, forecast=forecast))
        report = score_plans([scene], plan[None], PDMSConfig(protocol=protocol), {scene.token: plan})
        out[forecast] = report.to_json()["scenes"][scene.token]
    # constant velocity drives into the braking lead; the logged motion lets IDM stop behind it
    assert out["constant_velocity"]["nc"] < 1.0 or out["constant_velocity"]["ttc"] < 1.0
    assert out["log_replay"]["nc"] == 1.0 and out["log_replay"]["ttc"] == 1.0
    key = "epdms" if protocol == "navsim-v2" else "pdms"
    assert out["log_replay"][key] > out["constant_velocity"][key] + 0.3


def test_unknown_forecast_is_refused() -> None:
    with pytest.raises(ValueError, match="forecast 'oracle'.*constant_velocity or log_replay"):
        pdm_closed_plan(braking_lead_scene(), p=PDMClosedParams(forecast="oracle"))


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    writer = SceneStoreWriter(tmp_path, {"world": to_dict(WorldConfig())}, num_shards=2)
    for k in range(2):
        scenes = [random_scene(10 * k + i, episode=f"ep{k}", token=f"ep{k}-{i}") for i in range(3)]
        writer.add_shard(write_shard(tmp_path, k, scenes, val_fraction=0.0, config_hash=writer.config_hash))
    writer.finish()
    return tmp_path


def test_eval_pdms_on_a_store_scores_every_sample_and_counts_a_corrupt_shard(
    store_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "pdms", "--store", str(store_dir), "--split", "all", "--planner", "pdm_closed"]
    assert cli([*args, "--planner-option", "forecast=log_replay", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_scored"] == len(SceneStore(store_dir)) == 6 and report["failures"] == []
    # a split without samples, or a mistyped planner field, is a clear error
    assert cli(["eval", "pdms", "--store", str(store_dir), "--planner", "human"]) == 2
    assert cli([*args, "--planner-option", "forcast=log_replay"]) == 2
    (store_dir / shard_name(1)).write_bytes(b"garbage")  # its 3 samples fail; the others are scored
    assert cli([*args, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["num_scored"] == 3 and len(report["failures"]) == 3
    assert all(shard_name(1) in f["reason"] or "ep1" in f["token"] for f in report["failures"])
