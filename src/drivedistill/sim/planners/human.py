"""Log replay: the human driver's logged future (the PDMS upper reference)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.registry import register


@dataclass
class HumanConfig:
    """No options: the plan is `scene.human_future`."""


class HumanPlanner:
    def plan(self, scene: MetricScene) -> np.ndarray:
        """(8, 3) logged rear-axle poses; a scene without a complete logged future is an error."""
        if not scene.human_valid.all():
            raise ValueError(
                f"scene {scene.token}: the logged future is incomplete ({int(scene.human_valid.sum())}/8 poses)"
            )
        return np.asarray(scene.human_future, np.float64)


@register("planner", "human", HumanConfig)
def build(cfg: HumanConfig) -> HumanPlanner:
    return HumanPlanner()
