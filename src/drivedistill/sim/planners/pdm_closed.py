"""PDM-Closed: IDM proposals along the route, simulated and scored, best kept (rule-based, privileged)."""

from __future__ import annotations

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.registry import register
from drivedistill.sim.pdm_closed import PDMClosedParams, pdm_closed_plan


class PDMClosedPlanner:
    def __init__(self, cfg: PDMClosedParams) -> None:
        self.cfg = cfg

    def plan(self, scene: MetricScene) -> np.ndarray:
        """(8, 3) rear-axle poses of the best of 15 proposals."""
        return pdm_closed_plan(scene, p=self.cfg)


@register("planner", "pdm_closed", PDMClosedParams)
def build(cfg: PDMClosedParams) -> PDMClosedPlanner:
    return PDMClosedPlanner(cfg)
