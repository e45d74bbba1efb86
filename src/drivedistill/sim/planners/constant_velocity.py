"""Constant velocity: keep the current speed and heading for 4 s (NAVSIM's weakest baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivedistill.config import check
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.registry import register


@dataclass
class ConstantVelocityConfig:
    num_poses: int = field(default=8, metadata=check(ge=1))
    dt: float = field(default=0.5, metadata=check(gt=0))  # [s]


class ConstantVelocityPlanner:
    def __init__(self, cfg: ConstantVelocityConfig) -> None:
        self.cfg = cfg

    def plan(self, scene: MetricScene) -> np.ndarray:
        """(num_poses, 3): straight ahead at the logged speed, rear-axle frame."""
        t = np.arange(1, self.cfg.num_poses + 1) * self.cfg.dt
        speed = float(scene.ego_dynamics[0])
        return np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], -1)


@register("planner", "constant_velocity", ConstantVelocityConfig)
def build(cfg: ConstantVelocityConfig) -> ConstantVelocityPlanner:
    return ConstantVelocityPlanner(cfg)
