"""Type validation: wrong shapes, dtypes and NaNs are rejected with the field and expected shape named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivedistill.testing import random_scene
from drivedistill.types import (
    AgentInput,
    AgentInputBatch,
    PlanOutput,
    Privileged,
    Trajectory,
    ValidationError,
)


def test_random_scene_is_valid() -> None:
    scene = random_scene(3)
    assert scene.privileged is not None
    assert scene.without_privileged().privileged is None


def test_agent_input_rejects_wrong_history_shape() -> None:
    ai = random_scene(0).agent_input
    with pytest.raises(
        ValidationError, match=r"AgentInput.ego_history: expected shape \(4, 3\), got \(3, 3\)"
    ):
        AgentInput(ai.camera, ai.bev, ai.ego_history[:3], ai.ego_status, ai.command)


def test_agent_input_rejects_float_camera_and_bad_command() -> None:
    ai = random_scene(0).agent_input
    with pytest.raises(ValidationError, match="AgentInput.camera: expected dtype kind"):
        AgentInput(ai.camera.astype(np.float32), ai.bev, ai.ego_history, ai.ego_status, ai.command)
    with pytest.raises(ValidationError, match="AgentInput.command"):
        AgentInput(ai.camera, ai.bev, ai.ego_history, ai.ego_status, 7)


def test_privileged_rejects_nan_future() -> None:
    p = random_scene(0).privileged
    assert p is not None
    bad = p.future_trajectory.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValidationError, match="Privileged.future_trajectory: contains NaN"):
        Privileged(
            bad,
            p.future_valid,
            p.future_frames,
            p.future_ego_status,
            p.agents,
            p.agents_valid,
            p.map,
            p.scenario,
        )


def test_privileged_agents_valid_must_match_agents() -> None:
    p = random_scene(0, num_agents=3).privileged
    assert p is not None
    with pytest.raises(ValidationError, match=r"Privileged.agents_valid: expected shape \(9, 3\)"):
        Privileged(
            p.future_trajectory,
            p.future_valid,
            p.future_frames,
            p.future_ego_status,
            p.agents,
            p.agents_valid[:, :2],
            p.map,
            p.scenario,
        )


def test_trajectory_and_batch_types() -> None:
    with pytest.raises(ValidationError, match=r"Trajectory.poses: expected shape \(\*, 3\)"):
        Trajectory(np.zeros((8, 2), np.float32))
    assert Trajectory(np.zeros((8, 3), np.float32)).horizon(6).poses.shape == (6, 3)
    with pytest.raises(ValidationError, match="AgentInputBatch.ego_status"):
        AgentInputBatch(
            torch.zeros(2, 3, 8, 8),
            torch.zeros(2, 3, 8, 8),
            torch.zeros(2, 4, 3),
            torch.zeros(3, 3),
            torch.zeros(2, dtype=torch.long),
        )
    with pytest.raises(ValidationError, match=r"PlanOutput.trajectory: expected shape \(2, 8, 3\)"):
        PlanOutput(torch.zeros(2, 6, 3))
