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


def ego_lane(lanes: list[np.ndarray]) -> np.ndarray | None:
    """The centreline (P, 2) of the lane the ego is in at t = 0, oriented along +x, or None (no lane runs
    along the ego heading within 45°)."""
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
    return None if best is None else best[1]


def _inside(polygon: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test: polygon (P, 2), points (N, 2) → (N,) bool."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    a, b = polygon, np.roll(polygon, -1, axis=0)
    crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (
            b[None, :, 1] - a[None, :, 1]
        )
    return (crosses & (x < xi)).sum(1) % 2 == 1


def lateral_offset(lanes: list[np.ndarray], point: np.ndarray) -> float:
    """Signed offset [m] (left +) of `point` (2,) from the lane the ego is in at t = 0.

    The ego's lane is the nearest centerline running along +x (within 45°). Without lanes the ego frame
    itself stands in for the lane (offset = y), which confuses a bend with a lane change: worlds
    and adapters should provide lanes.
    """
    lane = ego_lane(lanes)
    if lane is None:
        return float(point[1])
    return float(project(lane, point[None].astype(np.float64))[1][0])


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


def junction_conflict(priv: Privileged, heading_gap: float = 0.5) -> Cause | None:
    """Cross traffic at a junction: at some time t = 0 … 4 s the ego and a moving vehicle heading another
    way (|Δyaw| > heading_gap [rad]) are both in the junction area. The area is the circle through the
    map's intersection polygon (whose vertices lie at 0.6 of the junction radius in the default world)."""
    n = max(int(priv.future_valid.sum()), 1)
    ego = np.vstack([np.zeros((1, 3)), priv.future_trajectory[:n].astype(np.float64)])  # (T, 3)
    agents, valid = priv.agents, priv.agents_valid
    steps = min(len(ego), agents.shape[0])
    for poly in priv.map.intersection_polygons:
        if len(poly) < 3:
            continue
        centre = poly.astype(np.float64).mean(0)
        radius = float(np.linalg.norm(poly - centre, axis=1).mean()) / 0.6
        for k in range(steps):
            if np.linalg.norm(ego[k, :2] - centre) > radius:
                continue
            pos = agents[k, :, :2].astype(np.float64)
            speed = np.hypot(agents[k, :, 5], agents[k, :, 6])
            gap = np.abs(np.angle(np.exp(1j * (agents[k, :, 2] - ego[k, 2]))))
            hit = (
                valid[k]
                & (np.linalg.norm(pos - centre, axis=1) < radius)
                & (gap > heading_gap)
                & (speed > 0.5)
            )
            if hit.any():
                a = int(np.nonzero(hit)[0][0])
                d0 = float(agents[0, a, 1]) if valid[0, a] else float(pos[a, 1])
                dist = (
                    float(np.linalg.norm(agents[0, a, :2])) if valid[0, a] else float(np.linalg.norm(pos[a]))
                )
                cls, length = int(agents[0, a, 7]), float(agents[0, a, 3])
                return Cause(
                    "cross_traffic", _noun(cls, length), dist, float(speed[a]), float(speed[a]),
                    "left" if d0 > 0 else "right",
                )  # fmt: skip
    return None


# [m/s²] deceleration of a vehicle in our path between two 0.5-s track samples that is hard braking
BRAKE_DECEL = 3.0
# [m] lateral move of a vehicle, relative to our lane, within the 4 s that makes it a cut-in
CUT_IN_SHIFT = 1.0
# [m/s] a vehicle beside our path slower than this is a stopped vehicle (standing or crawling, ≤ 3.6 km/h)
CRAWL = 1.0


def _max_decel(speeds: np.ndarray, ks: np.ndarray) -> float:
    """Largest deceleration [m/s²] between consecutive valid track samples (speeds [m/s] at steps ks)."""
    if len(ks) < 2:
        return 0.0
    dt = np.diff(ks).astype(np.float64) * 0.5
    return float((-(np.diff(speeds) / dt)).max())


def find_causes(
    priv: Privileged, v0: float, corridor: float, lookahead: float, brake_drop: float, curve_yaw: float
) -> list[Cause]:
    """Detected causes, most important first (CAUSE_PRIORITY, then distance).

    v0 [m/s] ego speed; corridor [m] half width of the ego path (plus the agent's half width);
    lookahead [m]; brake_drop [m/s] speed drop within 2 s that is braking; curve_yaw [rad].
    """
    path, s_ego = ego_path(priv, lookahead)
    lane = ego_lane(priv.map.lanes)  # a vehicle in our lane is in our way even if the plan swerves round it
    reach = lookahead + float(s_ego[-1])  # a stopped vehicle matters as far as we get in 4 s plus lookahead
    causes: list[Cause] = []
    lead_found = False
    path_in_junction = any(
        bool(_inside(poly.astype(np.float64), path).any()) for poly in priv.map.intersection_polygons
    )
    agents, valid = priv.agents, priv.agents_valid
    order = np.argsort(agents[0, :, 0])  # nearest first along x
    for a in order:
        if not valid[0, a]:
            continue
        yaw, length, width, cls = (float(agents[0, a, i]) for i in (2, 3, 4, 7))
        ks = np.nonzero(valid[:, a])[0]
        s, d, _ = project(path, agents[ks, a, :2].astype(np.float64))
        s0, d0 = float(s[0]), float(d[0])
        speeds = np.hypot(agents[ks, a, 5], agents[ks, a, 6])
        speed0 = float(speeds[0])
        half = corridor + width / 2
        in_lane = False
        if lane is not None:
            sl, dl, _ = project(lane, agents[ks[:1], a, :2].astype(np.float64))
            in_lane = bool(sl[0] > 0 and abs(dl[0]) < half)
        if s0 <= 0 or s0 > (reach if speed0 < 0.5 and (in_lane or abs(d0) < half) else lookahead):
            continue
        later_speeds = speeds[ks >= 1]  # the whole 4-s window: a lead may brake late in it
        speed_later = float(later_speeds.min()) if len(later_speeds) else speed0
        noun = _noun(int(cls), length)
        side = "left" if d0 > 0 else "right"
        if speed0 < CRAWL and abs(d0) < 8.0 and not (abs(d0) < half or in_lane) and cls != AgentClass.STATIC:
            # a stopped (or crawling) vehicle beside our path: the plan passes it, or it blocks the next lane
            # (a stop-and-go queue we drive past in the free lane)
            causes.append(Cause("stopped_vehicle", noun, s0, speed0, speed_later, side))
            continue
        if abs(d0) < half or in_lane:
            if lead_found:
                continue  # only the first vehicle in our path explains our speed
            lead_found = True
            settling = abs(d0) > 0.8 and float(np.abs(d[ks >= 1]).min(initial=abs(d0))) < abs(d0) - 1.0
            if speed0 < 0.5:
                kind = "stopped_vehicle"
            elif speed0 - speed_later > brake_drop and (
                _max_decel(speeds, ks) >= BRAKE_DECEL or speed_later < 0.5
            ):
                # a lead braking hard (or to a standstill) is braking even while it drifts or we move over;
                # a lead merely easing off (drop without hard braking) is a slow lead below
                kind = "lead_brake"
            elif settling:
                # still moving over into our lane: a cut-in, or cross traffic from another arm where our
                # path crosses a junction
                kind = "cross_traffic" if path_in_junction else "cut_in"
            elif speed0 < v0 - 2.0:
                kind = "slow_lead"
            else:
                kind = "lead"
            causes.append(Cause(kind, noun, s0, speed0, speed_later, side))
            continue
        later = ks >= 1
        enters = bool(np.any((np.abs(d) < half) & (s > s_ego[ks]) & later))
        # a cut-in car moves across lanes itself: its offset from our lane changes by ≥ CUT_IN_SHIFT m
        # (a car holding its lane that our plan or the straight extension of it runs into is not one)
        shift = float(np.abs(d - d0).max())
        if lane is not None and later.any():
            sl, dl, _ = project(lane, agents[ks, a, :2].astype(np.float64))
            enters = enters or bool(np.any((np.abs(dl[1:]) < half) & (sl[1:] > 0)))
            shift = float(np.abs(dl - dl[0]).max())
        crosses = bool(np.any(np.sign(d[later]) != np.sign(d0))) if later.any() else False
        in_junction = any(
            bool(_inside(poly.astype(np.float64), agents[ks, a, :2].astype(np.float64)).any())
            for poly in priv.map.intersection_polygons
        )
        crossing_heading = abs(_wrap(yaw)) > 0.5
        if (
            crossing_heading
            and speed0 > 1.0
            and (((enters or crosses) and abs(_wrap(yaw)) < 2.5) or in_junction)
        ):
            causes.append(Cause("cross_traffic", noun, s0, speed0, speed_later, side))
        elif enters and abs(d0) < 8.0 and shift >= CUT_IN_SHIFT:
            # a car moving into our path in a junction, or where our path crosses one, comes from another arm
            # (or the ring of a roundabout): cross traffic
            kind = "cross_traffic" if in_junction or path_in_junction else "cut_in"
            causes.append(Cause(kind, noun, s0, speed0, speed_later, side))
    if not any(c.kind == "cross_traffic" for c in causes):
        conflict = junction_conflict(priv)
        if conflict is not None:
            causes.append(conflict)
    yaws = priv.future_trajectory[: max(int(priv.future_valid.sum()), 1), 2]
    route = priv.map.route
    ahead = route[(route[:, 0] > 0) & (np.linalg.norm(route, axis=1) < lookahead)] if len(route) else route
    route_yaw = np.arctan2(np.diff(ahead[:, 1]), np.diff(ahead[:, 0])) if len(ahead) >= 2 else np.zeros(1)
    bend = max(yaws.tolist() + route_yaw.tolist(), key=abs)
    if abs(bend) >= curve_yaw:
        causes.append(Cause("curve", side="left" if bend > 0 else "right"))
    causes.sort(key=lambda c: (CAUSE_PRIORITY.index(c.kind), c.distance))
    return causes
