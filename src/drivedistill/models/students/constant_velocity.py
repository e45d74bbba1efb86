"""Constant velocity and yaw rate: the no-learning reference plan (no parameters).

Extrapolates the current speed v [m/s] and yaw rate ω [rad/s] along a circular arc in the current ego
frame: yaw(t) = ω t, x(t) = sin(ω t) / ω · v, y(t) = (1 − cos(ω t)) / ω · v, written with sinc so that
ω → 0 is exact. With `source="history"` v and ω come from the last past pose (t = −0.5 s) instead of
the ego status (for data without a speed sensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from drivedistill.config import ConfigError
from drivedistill.models.students.base import Student, StudentConfig
from drivedistill.registry import register
from drivedistill.types import DT, NUM_FUTURE, AgentInputBatch, PlanOutput


@dataclass
class ConstantVelocityConfig(StudentConfig):
    """Where speed and yaw rate come from: the ego status sensor or the last past pose."""

    source: Literal["status", "history"] = "status"

    def __post_init__(self) -> None:
        if not self.use_ego_status:
            raise ConfigError(
                "constant_velocity extrapolates the ego state; use_ego_status=False leaves it no input"
            )


def arc_trajectory(speed: torch.Tensor, yaw_rate: torch.Tensor, num_steps: int = NUM_FUTURE) -> torch.Tensor:
    """(B,) speed [m/s], (B,) yaw rate [rad/s] → (B, num_steps, 3) poses at DT, 2·DT, … [m, m, rad].

    x = v sin(ωt)/ω, y = 2 v sin²(ωt/2)/ω (no 1 − cos cancellation), and the straight line v·t where
    |ω| < 1e-6; written with elementary ops only so that students using it as a prior export to ONNX.
    """
    t = torch.arange(1, num_steps + 1, dtype=speed.dtype, device=speed.device) * DT  # (T,)
    w, v = yaw_rate[:, None], speed[:, None]
    wt = w * t  # (B, T)
    straight = w.abs() < 1e-6
    w_safe = torch.where(straight, torch.ones_like(w), w)
    x = torch.where(straight, v * t, v * torch.sin(wt) / w_safe)
    y = torch.where(straight, v * w * t * t / 2, 2 * v * torch.sin(wt / 2) ** 2 / w_safe)
    return torch.stack([x, y, wt], dim=-1)


def constant_velocity_prior(inputs: AgentInputBatch, turn: bool = True) -> torch.Tensor:
    """(B, NUM_FUTURE, 3) the constant speed / yaw-rate arc of the ego status (a plan prior); with
    `turn=False` the constant-speed straight line (the yaw rate is not used)."""
    yaw_rate = inputs.ego_status[:, 2] if turn else torch.zeros_like(inputs.ego_status[:, 2])
    return arc_trajectory(inputs.ego_status[:, 0], yaw_rate)


class ConstantVelocity(Student):
    """features: "plan_query" (B, 2) = (speed, yaw rate), "scene_tokens" (B, 1, 2) the same."""

    feature_dim = 2

    def __init__(self, cfg: ConstantVelocityConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        if self.cfg.source == "status":
            speed, yaw_rate = inputs.ego_status[:, 0], inputs.ego_status[:, 2]
        else:  # the last past pose is at t = −DT: it moved back by (x, y) and rotated by yaw
            last = inputs.ego_history[:, -1]  # (B, 3), x < 0 when driving forward
            direction = torch.where(last[:, 0] > 0, -1.0, 1.0).to(last.dtype)  # reversing: x > 0
            speed = direction * torch.linalg.vector_norm(last[:, :2], dim=1) / DT
            yaw_rate = -last[:, 2] / DT
        state = torch.stack([speed, yaw_rate], dim=1)
        return PlanOutput(
            arc_trajectory(speed, yaw_rate), {"plan_query": state, "scene_tokens": state[:, None]}
        )


@register("student", "constant_velocity", ConstantVelocityConfig)
def build(cfg: ConstantVelocityConfig) -> ConstantVelocity:
    return ConstantVelocity(cfg)
