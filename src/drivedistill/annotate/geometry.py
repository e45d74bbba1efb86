"""Geometry for the rule-based annotator: projection on polylines and the causes of a manoeuvre.

All inputs are in the current ego frame at t = 0 (x forward, y left) [m]; agent tracks are
`Privileged.agents` (NUM_AGENT_STEPS, A, AGENT_FIELDS) at t = 0, 0.5, ..., 4 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivedistill.types import AgentClass, Privileged

# causes ordered by how much they explain a manoeuvre (the first one is named in the reasoning)
CAUSE_PRIORITY = ("stopped_vehicle", "lead_brake", "cut_in", "cross_traffic", "slow_lead", "lead", "curve")


@dataclass(frozen=True)
class Cause:
    """Something that explains the plan. distance [m] along the ego path; speeds [m/s]; side left/right."""

    kind: str
    noun: str = ""
    distance: float = 0.0
    speed: float = 0.0
    speed_later: float = 0.0
    side: str = ""


def project(polyline: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project points (N, 2) on a polyline (P, 2) extended linearly beyond both ends.

    Returns arc length s (N,) [m] from the first vertex (negative before it), signed lateral offset d
    (N,) [m] (positive = left of the polyline's direction) and the distance to the *unextended* polyline.
    """
    if len(polyline) < 2:
        polyline = np.vstack([polyline[:1], polyline[:1] + np.array([[1.0, 0.0]])])
    a, b = polyline[:-1], polyline[1:]
    seg = b - a
    length = np.maximum(np.linalg.norm(seg, axis=1), 1e-6)
    u = seg / length[:, None]
    rel = pts[:, None, :] - a[None]  # (N, S, 2)
    t = (rel * u[None]).sum(-1)  # along each segment [m]
    lo = np.zeros_like(length)
    lo[0] = -np.inf
    hi = length.copy()
    hi[-1] = np.inf
    tc = np.clip(t, lo, hi)
    dist = np.linalg.norm(rel - tc[..., None] * u[None], axis=-1)
    i = dist.argmin(axis=1)
    n = np.arange(len(pts))
    cum = np.concatenate([[0.0], np.cumsum(length)])
    s = cum[i] + tc[n, i]
    d = u[i, 0] * rel[n, i, 1] - u[i, 1] * rel[n, i, 0]
    inside = np.clip(t, 0.0, length)
    dist_inside = np.linalg.norm(rel - inside[..., None] * u[None], axis=-1).min(axis=1)
    return s, d, dist_inside


def _aligned(lane: np.ndarray) -> np.ndarray:
    """The lane oriented along the ego heading (+x) near the ego."""
    if len(lane) < 2:
        return lane
    k = int(np.linalg.norm(lane, axis=1).argmin())
    k = min(k, len(lane) - 2)
    return lane if lane[k + 1, 0] >= lane[k, 0] else lane[::-1]


def lateral_offset(lanes: list[np.ndarray], point: np.ndarray) -> float:
    """Signed offset [m] (left +) of `point` (2,) from the lane the ego is in at t = 0.

    The ego's lane is the nearest centerline running along +x (within 45°). Without lanes the ego frame
    itself stands in for the lane (offset = y), which confuses a bend with a lane change: worlds
    and adapters should provide lanes.
    """
    origin = np.zeros((1, 2))
    best: tuple[float, np.ndarray] | None = None
    for lane in lanes:
        oriented = _aligned(lane.astype(np.float64))
        if len(oriented) < 2:
            continue
        k = min(int(np.linalg.norm(oriented, axis=1).argmin()), len(oriented) - 2)
        direction = oriented[k + 1] - oriented[k]
        if direction[0] < np.cos(np.pi / 4) * np.linalg.norm(direction):
            continue
        _, _, dist = project(oriented, origin)
        if best is None or dist[0] < best[0]:
            best = (float(dist[0]), oriented)
    if best is None:
        return float(point[1])
    return float(project(best[1], point[None].astype(np.float64))[1][0])


def _noun(cls: int, length: float) -> str:
    if cls == AgentClass.PEDESTRIAN:
        return "pedestrian"
    if cls == AgentClass.BICYCLE:
        return "cyclist"
    if cls == AgentClass.STATIC:
        return "obstacle"
    return "truck" if length > 7.0 else "car"


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def ego_path(priv: Privileged, lookahead: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego path polyline from the origin through the valid plan, extended straight to `lookahead` [m].

    Returns the polyline (P, 2) and the ego's arc length at t = 0, 0.5, ..., 4 s (NUM_AGENT_STEPS,).
    """
    n = max(int(priv.future_valid.sum()), 1)
    pts = np.vstack([np.zeros((1, 2)), priv.future_trajectory[:n, :2].astype(np.float64)])
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s_ego = np.concatenate([[0.0], np.cumsum(steps)])
    s_ego = np.concatenate([s_ego, np.full(len(priv.future_valid) + 1 - len(s_ego), s_ego[-1])])
    yaw = float(priv.future_trajectory[n - 1, 2])
    heading = pts[-1] - pts[-2] if steps[-1] > 0.1 else np.array([np.cos(yaw), np.sin(yaw)])
    heading = heading / max(float(np.linalg.norm(heading)), 1e-6)
    extra = max(lookahead - s_ego[-1], 1.0)
    return np.vstack([pts, pts[-1] + extra * heading]), s_ego


def find_causes(
    priv: Privileged, v0: float, corridor: float, lookahead: float, brake_drop: float, curve_yaw: float
) -> list[Cause]:
    """Detected causes, most important first (CAUSE_PRIORITY, then distance).

    v0 [m/s] ego speed; corridor [m] half width of the ego path (plus the agent's half width);
    lookahead [m]; brake_drop [m/s] speed drop within 2 s that is braking; curve_yaw [rad].
    """
    path, s_ego = ego_path(priv, lookahead)
    causes: list[Cause] = []
    lead_found = False
    agents, valid = priv.agents, priv.agents_valid
    order = np.argsort(agents[0, :, 0])  # nearest first along x
    for a in order:
        if not valid[0, a]:
            continue
        yaw, length, width, cls = (float(agents[0, a, i]) for i in (2, 3, 4, 7))
        ks = np.nonzero(valid[:, a])[0]
        s, d, _ = project(path, agents[ks, a, :2].astype(np.float64))
        s0, d0 = float(s[0]), float(d[0])
        if s0 <= 0 or s0 > lookahead:
            continue
        speeds = np.hypot(agents[ks, a, 5], agents[ks, a, 6])
        speed0 = float(speeds[0])
        soon = speeds[(ks >= 1) & (ks <= 4)]
        speed_later = float(soon.min()) if len(soon) else speed0
        half = corridor + width / 2
        noun = _noun(int(cls), length)
        side = "left" if d0 > 0 else "right"
        if abs(d0) < half:
            if lead_found:
                continue  # only the first vehicle in our path explains our speed
            lead_found = True
            if speed0 < 0.5:
                kind = "stopped_vehicle"
            elif speed0 - speed_later > brake_drop:
                kind = "lead_brake"
            elif speed0 < v0 - 2.0:
                kind = "slow_lead"
            else:
                kind = "lead"
            causes.append(Cause(kind, noun, s0, speed0, speed_later, side))
            continue
        later = ks >= 1
        enters = bool(np.any((np.abs(d) < half) & (s > s_ego[ks]) & later))
        crosses = bool(np.any(np.sign(d[later]) != np.sign(d0))) if later.any() else False
        if abs(_wrap(yaw)) > 0.6 and abs(_wrap(yaw)) < 2.5 and speed0 > 1.0 and (enters or crosses):
            causes.append(Cause("cross_traffic", noun, s0, speed0, speed_later, side))
        elif enters and abs(d0) < 8.0:
            causes.append(Cause("cut_in", noun, s0, speed0, speed_later, side))
    yaws = priv.future_trajectory[: max(int(priv.future_valid.sum()), 1), 2]
    route = priv.map.route
    ahead = route[(route[:, 0] > 0) & (np.linalg.norm(route, axis=1) < lookahead)] if len(route) else route
    route_yaw = np.arctan2(np.diff(ahead[:, 1]), np.diff(ahead[:, 0])) if len(ahead) >= 2 else np.zeros(1)
    bend = max(yaws.tolist() + route_yaw.tolist(), key=abs)
    if abs(bend) >= curve_yaw:
        causes.append(Cause("curve", side="left" if bend > 0 else "right"))
    causes.sort(key=lambda c: (CAUSE_PRIORITY.index(c.kind), c.distance))
    return causes
