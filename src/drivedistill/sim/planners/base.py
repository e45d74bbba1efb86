"""The planner interface of metric scenes: `plan(scene) -> (8, 3)` rear-axle poses at 0.5 … 4 s."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from drivedistill.metrics.metric_scene import MetricScene


class MetricPlanner(Protocol):
    """A planner for PDMS scoring: plans are (8, 3) x, y, yaw [m, m, rad] relative to `scene.ego_pose` (rear axle)."""

    def plan(self, scene: MetricScene) -> np.ndarray: ...
