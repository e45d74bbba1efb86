"""PDM-Closed (Dauner et al. 2023), the EP reference of NAVSIM v1.1 and a strong rule-based planner.

1. Centerline: the scene's route through its on-route lanes, resampled every 0.5 m.
2. 15 proposals = 3 lateral offsets of the centerline (0, ±1 m) × 5 IDM target speeds
   (0.2 … 1.0 × speed limit; 15 m/s when the map has none).
3. IDM (min gap 1 m, headway 1.5 s, a_max 1.5, b 3.0, exponent 10) integrated at 0.1 s for 4 s along
   each offset path; the leading agent is the nearest object ahead in the ego-width corridor, agents
   forecast at constant velocity; with no agent, the end of the centerline acts as a stopped lead.
4. Every proposal is simulated (LQR + bicycle) and scored with the PDMS scorer against the forecast;
   the best-scoring proposal is the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivedistill.metrics.metric_scene import MetricScene
from drivedistill.sim.geometry import (
    absolute_to_relative,
    interpolate_polyline,
    project_to_polyline,
    resample_polyline,
)
from drivedistill.sim.lqr import simulate_plans
from drivedistill.sim.scene_geometry import AgentBoxes, MapIndex, constant_velocity_agents
from drivedistill.sim.scorer import TTC_STEPS, score_states


@dataclass(frozen=True)
class PDMClosedParams:
    """Constants of PDM-Closed as used by NAVSIM v1.1."""

    lateral_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0)  # [m], left positive
    speed_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)  # × speed limit
    fallback_speed_limit: float = 15.0  # [m/s]
    min_gap: float = 1.0  # [m]
    headway: float = 1.5  # [s]
    accel_max: float = 1.5  # [m/s²]
    decel_max: float = 3.0  # [m/s²]
    exponent: float = 10.0
    dt: float = 0.1  # [s]
    horizon_steps: int = 40  # 4 s
    plan_stride: int = 5  # 0.5 s output poses
    path_resolution: float = 0.5  # [m]


def offset_paths(centerline: np.ndarray, offsets: tuple[float, ...], resolution: float) -> list[np.ndarray]:
    """Polylines (P, 2) parallel to `centerline`, shifted left by each offset [m]."""
    line = resample_polyline(centerline, resolution)
    tangent = np.gradient(line, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], -1)
    return [line + o * normal for o in offsets]


def idm_progress(
    scene: MetricScene, paths: list[np.ndarray], targets: np.ndarray, agents: AgentBoxes, p: PDMClosedParams
) -> np.ndarray:
    """Progress (len(paths), len(targets), horizon_steps + 1) [m] along each path under IDM."""
    n_p, n_v, n_t = len(paths), len(targets), p.horizon_steps + 1
    s = np.zeros((n_p, n_v, n_t))
    v = np.full((n_p, n_v), float(scene.ego_dynamics[0]))
    lengths = np.array([np.linalg.norm(np.diff(path, axis=0), axis=-1).sum() for path in paths])
    for i, path in enumerate(paths):
        s[i, :, 0] = project_to_polyline(path, scene.ego_pose[None, :2])[0][0]
    half_corridor = 0.5 * scene.width + 0.5 * scene.agent_sizes[:, 1]
    root_ab = 2.0 * np.sqrt(p.accel_max * p.decel_max)
    for k in range(p.horizon_steps):
        step = min(k, agents.num_steps - 1)
        x_lead = np.repeat(lengths[:, None], n_v, 1)
        v_lead = np.zeros((n_p, n_v))
        rear_lead = np.zeros((n_p, n_v))
        for i, path in enumerate(paths):
            if agents.centers.shape[1] == 0:
                break
            s_a, d_a = project_to_polyline(path, np.nan_to_num(agents.centers[step]))
            tangent = interpolate_polyline(path, s_a)[:, 2]
            vel = (agents.centers[min(step + 1, agents.num_steps - 1)] - agents.centers[step]) / p.dt
            along = vel[:, 0] * np.cos(tangent) + vel[:, 1] * np.sin(tangent)
            rear = 0.5 * scene.agent_sizes[:, 0]
            inside = agents.valid[step] & (np.abs(d_a) < half_corridor) & (s_a < lengths[i])
            for j in range(n_v):
                ahead = inside & (s_a - rear > s[i, j, k])
                if ahead.any():
                    cand = np.flatnonzero(ahead)
                    best = cand[np.argmin(s_a[cand])]
                    x_lead[i, j], v_lead[i, j], rear_lead[i, j] = (
                        s_a[best],
                        np.nan_to_num(along[best]),
                        rear[best],
                    )
        gap = np.maximum(x_lead - s[..., k] - rear_lead - scene.front_length, p.min_gap)
        s_star = p.min_gap + v * p.headway + v * (v - v_lead) / root_ab
        accel = p.accel_max * (1.0 - (v / targets[None]) ** p.exponent - (s_star / gap) ** 2)
        accel = np.clip(accel, -p.decel_max, p.accel_max)
        s[..., k + 1] = s[..., k] + p.dt * v
        v = np.maximum(v + p.dt * accel, 0.0)
    return s


def pdm_closed_proposals(scene: MetricScene, agents: AgentBoxes, p: PDMClosedParams) -> np.ndarray:
    """Proposals (15, 8, 3): rear-axle poses at 0.5 … 4 s relative to `scene.ego_pose`."""
    limit = (
        scene.speed_limit
        if np.isfinite(scene.speed_limit) and scene.speed_limit > 0
        else p.fallback_speed_limit
    )
    targets = np.asarray(p.speed_fractions) * limit
    paths = offset_paths(scene.route, p.lateral_offsets, p.path_resolution)
    progress = idm_progress(scene, paths, targets, agents, p)[..., p.plan_stride :: p.plan_stride]
    plans = np.stack(
        [interpolate_polyline(path, progress[i]) for i, path in enumerate(paths)]
    )  # (3, 5, 8, 3)
    return absolute_to_relative(scene.ego_pose, plans.reshape(-1, progress.shape[-1], 3))


def pdm_closed_plan(
    scene: MetricScene, map_index: MapIndex | None = None, p: PDMClosedParams | None = None
) -> np.ndarray:
    """The best PDM-Closed proposal (8, 3), rear-axle frame of `scene.ego_pose`."""
    p = p or PDMClosedParams()
    map_index = map_index or MapIndex(scene)
    forecast = constant_velocity_agents(scene, p.horizon_steps + 1 + max(TTC_STEPS))
    proposals = pdm_closed_proposals(scene, forecast, p)
    states = simulate_plans(scene, proposals)
    scores = score_states(states, scene, map_index, forecast, scene.route, reference=None)
    return proposals[int(np.argmax(scores.score))]
