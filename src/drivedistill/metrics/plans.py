"""Plan scoring: open-loop (ST-P3 + UniAD) and PDMS of plans on project `Scene`s — plans in, metrics out.

    out = score_scene_plans(plans, scenes, PlanMetricsConfig())   # plans (N, 8, 3) box-centre poses

The caller runs the network (e.g. `train.evaluate.plan_scenes`); nothing here knows about models.
Plans are box-centre poses (x, y, yaw) [m, m, rad] at 0.5 … 4 s in the current ego frame — the frame of
`Privileged.future_trajectory`. For PDMS each scene becomes a `MetricScene`: a default-world scene with the
world's ego (`world/ego.py`), its plan moved to the rear-axle frame (`centre_plan_to_rear_axle`); a nuScenes
scene through `data.sources.nuscenes.stored_metric_scene` (needs the map expansion in the store; its poses
are already rear-axle poses, no shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from drivedistill.types import Scene

if TYPE_CHECKING:
    from drivedistill.geometry.metric_scene import MetricScene


@dataclass(frozen=True)
class PlanMetricsConfig:
    """Which plan metrics to compute. `pdms_protocol`: "navsim-v1.1" (default) or "navsim-v2" (EPDMS)."""

    openloop: bool = True
    occupancy_classes: str = "vehicles+pedestrians"
    pdms: bool = True
    pdms_max_scenes: int = 0  # > 0: only the first N scenes (PDMS is the slow one)
    pdms_protocol: str = "navsim-v1.1"


def score_scene_plans(plans: np.ndarray, scenes: list[Scene], cfg: PlanMetricsConfig) -> dict[str, Any]:
    """Metrics of (N, 8, 3) plans on N scenes with their privileged part. Keys: "openloop" and/or "pdms"
    (the JSON of `metrics.pdms.PDMSReport`, with its "protocol")."""
    plans = np.asarray(plans, np.float64)
    if len(plans) != len(scenes):
        raise ValueError(f"score_scene_plans: {len(scenes)} scenes but {len(plans)} plans")
    out: dict[str, Any] = {}
    if cfg.openloop:
        from drivedistill.metrics.openloop import evaluate_openloop_scenes

        out["openloop"] = evaluate_openloop_scenes(plans, scenes, occupancy_classes=cfg.occupancy_classes)
    if cfg.pdms:
        from drivedistill.metrics.pdms import PDMSConfig, score_plans

        n = cfg.pdms_max_scenes or len(scenes)
        pairs = [_metric_scene(s, p) for s, p in zip(scenes[:n], plans[:n])]
        rear = np.stack([p for _, p in pairs])
        out["pdms"] = score_plans(
            [m for m, _ in pairs], rear, PDMSConfig(protocol=cfg.pdms_protocol)
        ).to_json()
    return out


def metric_scene_of(scene: Scene) -> MetricScene:
    """The MetricScene of one stored scene, by its source: nuScenes scenes are rear-axle referenced
    already (`stored_metric_scene`, needs the map expansion in the store); default-world scenes go from
    the box-centre frame to the rear-axle frame with world/ego.py's geometry and the scenario's speed limit
    (`world.scenarios.speed_limit`: PDM-Closed, the EP reference, drives at the map's limit as in NAVSIM)."""
    source = scene.meta.get("source", "world")
    if source == "nuscenes":
        from drivedistill.data.sources.nuscenes import stored_metric_scene

        return stored_metric_scene(scene)
    if source != "world" or "scenario" not in scene.meta:
        raise ValueError(
            f"scene {scene.token}: no metric scene from a stored sample of source {source!r} (meta "
            f"{sorted(scene.meta)}); stored samples score for the default world and nuScenes — score other "
            "sources from their logs (`drivedistill eval pdms --source NAME --root DIR`)"
        )
    from drivedistill.geometry.metric_scene import metric_scene_from_scene
    from drivedistill.world.ego import REAR_AXLE_BEHIND_CENTRE as D
    from drivedistill.world.ego import pdms_ego_geometry
    from drivedistill.world.scenarios import speed_limit

    return metric_scene_from_scene(scene, D, pdms_ego_geometry(), speed_limit(scene.meta["scenario"]))


def _metric_scene(scene: Scene, plan: np.ndarray) -> tuple[MetricScene, np.ndarray]:
    """(MetricScene, (8, 3) rear-axle plan) of one scene, by the scene's source (`metric_scene_of`)."""
    if scene.meta.get("source") == "nuscenes":
        return metric_scene_of(scene), plan
    from drivedistill.geometry.metric_scene import centre_plan_to_rear_axle
    from drivedistill.world.ego import REAR_AXLE_BEHIND_CENTRE as D

    return metric_scene_of(scene), centre_plan_to_rear_axle(plan, D)
