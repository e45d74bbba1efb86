"""PDM-Closed (Dauner et al. 2023), the EP reference of NAVSIM v1.1 and a strong rule-based planner.

1. Centerline: the scene's route through its on-route lanes, resampled every 0.5 m.
2. 15 proposals = 3 lateral offsets of the centerline (0, ±1 m) × 5 IDM target speeds
   (0.2 … 1.0 × speed limit; 15 m/s when the map has none).
3. IDM (min gap 1 m, headway 1.5 s, a_max 1.5, b 3.0, exponent 10) integrated at 0.1 s for 4 s along
   each offset path; the leading agent is the nearest object ahead in the ego-width corridor, agents
   forecast at constant velocity; with no agent, the end of the centerline acts as a stopped lead.
4. Every proposal is simulated (LQR + bicycle) and scored with the PDMS scorer against the forecast;
   the best-scoring proposal is the plan. `selection` picks the scorer: v1.1's (default) or v2's
   (lane keeping then favours the centre path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from drivedistill.config import check
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.planar import (
    absolute_to_relative,
    interpolate_polyline,
    project_to_polyline,
    resample_polyline,
)
from drivedistill.geometry.scene_index import AgentBoxes, MapIndex, constant_velocity_agents, replay_agents
from drivedistill.sim.lqr import simulate_plans
from drivedistill.sim.scorer import TTC_STEPS, score_states, score_states_v2


@dataclass(frozen=True)
class PDMClosedParams:
    """Constants of PDM-Closed as used by NAVSIM v1.1."""

    lateral_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0)  # [m], left positive
    # × speed limit
    speed_fractions: tuple[float, ...] = field(default=(0.2, 0.4, 0.6, 0.8, 1.0), metadata=check(ge=0))
    fallback_speed_limit: float = field(default=15.0, metadata=check(gt=0))  # [m/s]
    min_gap: float = field(default=1.0, metadata=check(ge=0))  # [m]
    headway: float = field(default=1.5, metadata=check(ge=0))  # [s]
    accel_max: float = field(default=1.5, metadata=check(gt=0))  # [m/s²]
    decel_max: float = field(default=3.0, metadata=check(gt=0))  # [m/s²]
    exponent: float = field(default=10.0, metadata=check(gt=0))
    dt: float = field(default=0.1, metadata=check(gt=0))  # [s]
    horizon_steps: int = field(default=40, metadata=check(ge=1))  # 4 s
    plan_stride: int = field(default=5, metadata=check(ge=1))  # 0.5 s output poses
    path_resolution: float = field(default=0.5, metadata=check(gt=0))  # [m]
    # which scorer picks the best proposal: "navsim-v1.1" (PDMS) or "navsim-v2" (EPDMS without EC, so
    # lane keeping counts — NAVSIM v2's metric cache runs PDM-Closed with its v2 scorer)
    selection: str = "navsim-v1.1"
    # [s] 0 (default): NAVSIM's PDM-Closed, the EP reference — IDM's acceleration applies at once. > 0: the
    # IDM rollout starts from the ego's current (logged) acceleration and follows IDM's command with this
    # first-order lag, so consecutive frames' plans agree better (v2 EC) — an opt-in planner variant, not
    # the EP reference of reported scores (docs/metrics-pdms.md, "PDM-Closed vs the human").
    accel_lag: float = field(default=0.0, metadata=check(ge=0))
    # how agents are forecast for the IDM leader and the proposal scoring: "constant_velocity" (NAVSIM's
    # PDM-Closed, the EP reference) or "log_replay" — the scene's logged agent motion, privileged: an
    # upper-bound variant that shows what the constant-velocity forecast costs (docs/metrics-pdms.md)
    forecast: str = "constant_velocity"


def offset_paths(centerline: np.ndarray, offsets: tuple[float, ...], resolution: float) -> list[np.ndarray]:
    """Polylines (P, 2) parallel to `centerline`, shifted left by each offset [m]."""
    line = resample_polyline(centerline, resolution)
    tangent = np.gradient(line, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], -1)
    return [line + o * normal for o in offsets]


def _project_dense(path: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc length, signed lateral offset and path heading at the nearest vertex of a densely resampled
    path (P, 2) for points (..., 2) — exact to half the resampling step, O(log P) per point."""
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=-1))])
    seg = np.diff(path, axis=0)
    heading = np.arctan2(seg[:, 1], seg[:, 0])
    heading = np.append(heading, heading[-1])
    _, idx = cKDTree(path).query(points.reshape(-1, 2))
    idx = idx.reshape(points.shape[:-1])
    rel = points - path[idx]
    h = heading[idx]
    along = rel[..., 0] * np.cos(h) + rel[..., 1] * np.sin(h)
    lateral = -rel[..., 0] * np.sin(h) + rel[..., 1] * np.cos(h)
    return cum[idx] + along, lateral, h


def idm_progress(
    scene: MetricScene, paths: list[np.ndarray], targets: np.ndarray, agents: AgentBoxes, p: PDMClosedParams
) -> np.ndarray:
    """Progress (len(paths), len(targets), horizon_steps + 1) [m] along each path under IDM."""
    n_p, n_v, n_t = len(paths), len(targets), p.horizon_steps + 1
    s = np.zeros((n_p, n_v, n_t))
    v = np.full((n_p, n_v), float(scene.ego_dynamics[0]))
    a_prev = np.full((n_p, n_v), float(scene.ego_dynamics[1]))
    lengths = np.array([np.linalg.norm(np.diff(path, axis=0), axis=-1).sum() for path in paths])
    for i, path in enumerate(paths):
        s[i, :, 0] = project_to_polyline(path, scene.ego_pose[None, :2])[0][0]
    half_corridor = 0.5 * scene.width + 0.5 * scene.agent_sizes[:, 1]
    root_ab = 2.0 * np.sqrt(p.accel_max * p.decel_max)
    # agents projected on every path once for all steps: (paths, T, A)
    n_a = agents.centers.shape[1]
    steps = np.minimum(np.arange(p.horizon_steps), agents.num_steps - 1)
    centers = np.nan_to_num(agents.centers[steps])  # (T, A, 2)
    nxt = np.nan_to_num(agents.centers[np.minimum(steps + 1, agents.num_steps - 1)])
    vel = (nxt - centers) / p.dt
    rear = 0.5 * scene.agent_sizes[:, 0]
    proj = []
    for i, path in enumerate(paths):
        s_a, d_a, tangent = _project_dense(path, centers)
        along = vel[..., 0] * np.cos(tangent) + vel[..., 1] * np.sin(tangent)
        inside = agents.valid[steps] & (np.abs(d_a) < half_corridor) & (s_a < lengths[i])
        proj.append((np.where(inside, s_a - rear, np.inf), along))
    for k in range(p.horizon_steps):
        x_lead = np.repeat(lengths[:, None], n_v, 1)
        v_lead = np.zeros((n_p, n_v))
        rear_lead = np.zeros((n_p, n_v))
        for i in range(n_p if n_a else 0):
            back, along = proj[i][0][k], proj[i][1][k]
            ahead = back[None, :] > s[i, :, k, None]  # (V, A)
            cand = np.where(ahead, back[None, :], np.inf)
            best = cand.argmin(-1)
            has = np.isfinite(cand[np.arange(n_v), best])
            x_lead[i, has] = back[best[has]] + rear[best[has]]
            v_lead[i, has] = along[best[has]]
            rear_lead[i, has] = rear[best[has]]
        gap = np.maximum(x_lead - s[..., k] - rear_lead - scene.front_length, p.min_gap)
        s_star = p.min_gap + v * p.headway + v * (v - v_lead) / root_ab
        accel = p.accel_max * (1.0 - (v / targets[None]) ** p.exponent - (s_star / gap) ** 2)
        accel = np.clip(accel, -p.decel_max, p.accel_max)
        if p.accel_lag > 0.0:  # the acceleration follows IDM's with a first-order lag from its current value
            accel = a_prev + p.dt / (p.dt + p.accel_lag) * (accel - a_prev)
            a_prev = accel
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
    if p.forecast == "constant_velocity":
        forecast = constant_velocity_agents(scene, p.horizon_steps + 1 + max(TTC_STEPS))
    elif p.forecast == "log_replay":
        forecast = replay_agents(scene)
    else:
        raise ValueError(f"PDMClosedParams.forecast {p.forecast!r}: choose constant_velocity or log_replay")
    proposals = pdm_closed_proposals(scene, forecast, p)
    states = simulate_plans(scene, proposals)
    if p.selection == "navsim-v2":
        best = score_states_v2(
            states, scene, map_index, forecast, scene.route, None, with_history=False
        ).score
    elif p.selection == "navsim-v1.1":
        best = score_states(states, scene, map_index, forecast, scene.route, reference=None).score
    else:
        raise ValueError(f"PDMClosedParams.selection {p.selection!r}: choose navsim-v1.1 or navsim-v2")
    return proposals[int(np.argmax(best))]
