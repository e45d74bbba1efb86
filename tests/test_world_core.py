"""The default world: config validation, camera geometry, determinism, scene contents, expert safety."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from drivedistill.types import Command
from drivedistill.world.camera import CameraConfig, horizon_row, project_points
from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import EGO_LENGTH, EGO_WIDTH, run_episode

SMALL: dict = {"episode_seconds": 7.0, "camera": CameraConfig(height=32, width=64)}


def test_config_rejects_bad_values_with_field_names() -> None:
    with pytest.raises(ValueError, match=r"WorldConfig\.scenarios"):
        WorldConfig(scenarios=["motorway"])
    with pytest.raises(ValueError, match="episode_seconds"):
        WorldConfig(episode_seconds=3.0)
    with pytest.raises(ValueError, match=r"event_probs\.cut_in"):
        WorldConfig(event_probs={"cut_in": 1.5})


def test_camera_geometry() -> None:
    cam = CameraConfig()
    uv, ok = project_points(np.array([[20.0, 0.0, 0.0], [60.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]), cam)
    assert ok.tolist() == [True, True, False]
    assert uv[0, 0] == pytest.approx(cam.width / 2) and uv[1, 0] == pytest.approx(cam.width / 2)
    assert uv[1, 1] < uv[0, 1]  # farther on the ground → higher in the image
    assert horizon_row(cam) < uv[1, 1]
    lines, _ = project_points(np.array([[10, 2, 0], [10, -2, 0], [50, 2, 0], [50, -2, 0]], float), cam)
    assert abs(lines[2, 0] - lines[3, 0]) < abs(lines[0, 0] - lines[1, 0]) / 3  # lane lines converge
    left, _ = project_points(np.array([[20.0, 3.0, 0.0]]), cam)
    assert left[0, 0] < cam.width / 2  # y left → image left


def test_episode_is_deterministic_and_complete() -> None:
    cfg = WorldConfig(scenarios=["highway"], **SMALL)  # type: ignore[arg-type]
    a, b = run_episode(cfg, 3), run_episode(cfg, 3)
    assert len(a.scenes) == 3 and len(a.scenes) == len(b.scenes)
    for sa, sb in zip(a.scenes, b.scenes):
        assert sa.token == sb.token
        assert np.array_equal(sa.agent_input.camera, sb.agent_input.camera)
        assert np.array_equal(sa.privileged.future_trajectory, sb.privileged.future_trajectory)  # type: ignore[union-attr]
        assert np.array_equal(sa.privileged.agents, sb.privileged.agents)  # type: ignore[union-attr]
    s = a.scenes[0]
    assert s.token == "highway-s0-e00003-f004" and s.episode == "highway-s0-e00003"
    assert s.agent_input.camera.shape == (32, 64, 3) and s.agent_input.bev.shape == (128, 128, 2)
    assert s.privileged is not None and s.privileged.labelled_bev is not None
    assert s.privileged.labelled_bev.shape == (128, 128, 3) and s.privileged.event == s.meta["event"]
    assert s.meta["scenario"] == "highway" and s.meta["event"]
    assert s.privileged is not None and s.privileged.future_frames.shape == (3, 32, 64, 3)
    # history is behind the ego, the future ahead (the expert drives forward)
    assert (s.agent_input.ego_history[:, 0] < 0).all() and s.privileged.future_trajectory[-1, 0] > 20
    assert s.agent_input.ego_status[0] == pytest.approx(s.privileged.future_trajectory[0, 0] / 0.5, rel=0.3)
    assert s.privileged.map.lanes and s.privileged.map.lane_on_route.any()
    assert EGO_LENGTH == 5.0 and EGO_WIDTH == 2.0
    other = run_episode(cfg, 4)
    assert not np.array_equal(other.scenes[0].agent_input.camera, s.agent_input.camera)


def test_intersection_command_follows_route() -> None:
    cfg = WorldConfig(
        scenarios=["intersection"], episode_seconds=10.0, camera=CameraConfig(height=32, width=64)
    )
    for i in range(3):
        result = run_episode(cfg, i)
        commands = [sc.agent_input.command for sc in result.scenes]
        final_yaw = [float(sc.privileged.future_trajectory[-1, 2]) for sc in result.scenes]  # type: ignore[union-attr]
        for c, yaw in zip(commands, final_yaw):
            if c == Command.LEFT:
                assert yaw > -0.2
            if c == Command.RIGHT:
                assert yaw < 0.2


@pytest.mark.slow
def test_expert_is_safe_across_scenarios() -> None:
    cfg = WorldConfig(
        **SMALL, event_probs={"lead_brake": 0.3, "cut_in": 0.3, "stopped_vehicle": 0.3, "cross_traffic": 1.0}
    )  # type: ignore[arg-type]
    results = [run_episode(cfg, i) for i in range(5)]
    assert sum(r.collided for r in results) == 0
    assert {r.scenario for r in results} == {"highway", "merge", "roundabout", "intersection", "racetrack"}


def test_dedicated_val_episodes_are_the_val_split_and_balanced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from drivedistill.data.store import SceneStore
    from drivedistill.world.collect import collect
    from drivedistill.world.config import VAL_EPISODE_BASE

    cfg = WorldConfig(scenarios=["highway", "merge"], num_episodes=2, val_episodes=2, **SMALL)  # type: ignore[arg-type]
    assert cfg.episode_indices() == [0, 1, VAL_EPISODE_BASE, VAL_EPISODE_BASE + 1]
    assert WorldConfig(**SMALL).split_of(0) is None  # type: ignore[arg-type]  # 0: the hash split
    manifest = collect(cfg, tmp_path, val_fraction=0.2, show_progress=False)
    eps = {e: v for sh in manifest["shards"] for e, v in sh["episodes"].items()}
    val = sorted((v["scenario"], v["index"]) for v in eps.values() if v["split"] == "val")
    train = sorted(v["index"] for v in eps.values() if v["split"] == "train")
    assert val == [("highway", VAL_EPISODE_BASE), ("merge", VAL_EPISODE_BASE + 1)] and train == [0, 1]
    store = SceneStore(tmp_path)
    assert store.tokens("val") and all(store.split_of(t) == "val" for t in store.tokens("val"))
    with pytest.raises(ValueError, match="val_episodes"):
        WorldConfig(val_episodes=-1)
