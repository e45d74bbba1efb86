"""PDM scorer of NAVSIM v1.1, vectorised over proposals: NC, DAC, DDC, TTC, EP, C and the score.

Input: simulated rear-axle states (B, 41, NUM_STATES) at 0.1 s of B proposals in one scene. Collisions
are found with a centre-distance prefilter and a numpy separating-axis test of oriented boxes; only
the (rare) candidate pairs reach the sequential at-fault / ignore-list logic, which loops over the 41
steps, not over boxes. Map predicates use prepared shapely unions on whole point arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivedistill.config import check
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.planar import (
    CENTER,
    FRONT_LEFT,
    FRONT_RIGHT,
    box_corners,
    convex_intersects,
    project_to_polyline,
)
from drivedistill.geometry.scene_index import AgentBoxes, MapIndex
from drivedistill.sim.bicycle import S
from drivedistill.sim.comfort import comfort_checks

STOPPED_EGO_SPEED = 5e-2  # [m/s] collision classification (ego stopped → not at fault)
TTC_STOPPED_SPEED = 5e-3  # [m/s] TTC skipped below this ego speed
TTC_STEPS = (0, 3, 6, 9)  # look-ahead in 0.1 s steps: δ = 0, 0.3, 0.6, 0.9 s
AHEAD_DEG, BEHIND_DEG = 20.0, 150.0


@dataclass(frozen=True)
class ScorerWeights:
    """v1.1 aggregation: PDMS = NC·DAC·(5·EP + 5·TTC + 2·C)/12 (DDC weight 0)."""

    progress: float = field(default=5.0, metadata=check(ge=0))
    ttc: float = field(default=5.0, metadata=check(ge=0))
    comfort: float = field(default=2.0, metadata=check(ge=0))
    driving_direction: float = field(default=0.0, metadata=check(ge=0))
    # [m] below this max progress, EP = 1
    progress_threshold: float = field(default=5.0, metadata=check(ge=0))
    ddc_horizon_steps: int = field(default=10, metadata=check(ge=1))  # 1 s
    ddc_compliance: float = field(default=2.0, metadata=check(ge=0))  # [m]
    ddc_violation: float = field(default=6.0, metadata=check(ge=0))  # [m]


@dataclass
class SubScores:
    """Per-proposal arrays (B,): multiplicative nc, dac; weighted ep, ttc, c, ddc; raw progress [m]."""

    nc: np.ndarray
    dac: np.ndarray
    ddc: np.ndarray
    ttc: np.ndarray
    c: np.ndarray
    progress: np.ndarray
    ep: np.ndarray
    score: np.ndarray


def ego_boxes(states: np.ndarray, scene: MetricScene) -> np.ndarray:
    """(B, T, 5, 2): corners FL, RL, RR, FR and the box centre of the ego at the simulated states."""
    heading = states[..., S.HEADING]
    d = scene.rear_axle_to_center
    center = states[..., [S.X, S.Y]] + d * np.stack([np.cos(heading), np.sin(heading)], -1)
    corners = box_corners(center, heading, scene.front_length + scene.rear_length, scene.width)
    return np.concatenate([corners, center[..., None, :]], axis=-2)


def _relative_angle(states_bt: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Angle [deg] between the ego heading and rear axle → target, for rows of states (N, NUM_STATES)."""
    vec = target_xy - states_bt[:, [S.X, S.Y]]
    norm = np.linalg.norm(vec, axis=-1)
    heading = np.stack([np.cos(states_bt[:, S.HEADING]), np.sin(states_bt[:, S.HEADING])], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (heading * vec).sum(-1) / norm
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _overlaps(
    corners: np.ndarray, centers: np.ndarray, radius: float, agents: AgentBoxes, steps: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Indices (b, t, a) where ego boxes corners (B, T, 4, 2) overlap agents at grid steps `steps` (T,).

    Agents are first reduced to those whose circle meets the bounding box of all proposals' ego circles
    at some step (one (T, A) test), so the (B, T, A') distance prefilter runs over the few nearby agents
    only — on city logs most of the hundreds of tracks are far from every proposal."""
    in_range = steps < agents.num_steps
    st = np.minimum(steps, agents.num_steps - 1)
    a_centers = agents.centers[st]  # (T, A, 2)
    valid = agents.valid[st] & in_range[:, None]
    pad = (radius + agents.radius)[None, :, None]
    lo, hi = centers.min(0)[:, None], centers.max(0)[:, None]  # (T, 1, 2) over proposals
    with np.errstate(invalid="ignore"):
        near = valid & ((a_centers >= lo - pad) & (a_centers <= hi + pad)).all(-1)
    sel = np.flatnonzero(near.any(0))
    if len(sel) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    ac = a_centers[:, sel]
    dx = centers[:, :, None, 0] - ac[None, :, :, 0]
    dy = centers[:, :, None, 1] - ac[None, :, :, 1]
    reach = (radius + agents.radius[sel]) ** 2
    close = (dx * dx + dy * dy <= reach) & near[:, sel][None]
    b, t, k = np.nonzero(close)
    a = sel[k]
    hit = convex_intersects(corners[b, t], agents.corners[st[t], a])
    return b[hit], t[hit], a[hit]


class EgoAreas(dict):  # type: ignore[type-arg]
    """(B, T) bool masks "non_drivable", "oncoming", "intersection" (rear axle in a junction); the costly
    "multiple_lanes" is evaluated only where it is read — at the (b, t) of collision / TTC candidates —
    with `multiple_lanes_at(b, t)` (per box, so identical to the full mask)."""

    def __init__(self, boxes: np.ndarray, states: np.ndarray, map_index: MapIndex) -> None:
        corners = boxes[..., :4, :]
        super().__init__(
            non_drivable=np.asarray(~map_index.in_drivable(corners).all(-1)),
            oncoming=~map_index.in_on_route_lane(boxes[..., CENTER, :]),
            intersection=map_index.in_intersection(states[..., [S.X, S.Y]]),
        )
        self.corners = corners
        self.map_index = map_index

    def __missing__(self, key: str) -> np.ndarray:
        if key != "multiple_lanes":
            raise KeyError(key)
        value = np.asarray(self.map_index.multiple_lanes(self.corners))
        self[key] = value
        return value

    def multiple_lanes_at(self, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        if "multiple_lanes" in self:
            return np.asarray(self["multiple_lanes"][b, t])
        if len(b) == 0:
            return np.zeros(0, bool)
        return np.asarray(self.map_index.multiple_lanes(self.corners[b, t]))

    def head(self, n: int) -> EgoAreas:
        """The masks of the first n steps."""
        out = EgoAreas.__new__(EgoAreas)
        dict.__init__(out, {k: v[:, :n] for k, v in self.items()})
        out.corners, out.map_index = self.corners[:, :n], self.map_index
        return out


def ego_areas(boxes: np.ndarray, states: np.ndarray, map_index: MapIndex) -> EgoAreas:
    """(B, T) bool masks: multiple_lanes (lazy), non_drivable, oncoming, intersection (rear axle in a junction)."""
    return EgoAreas(boxes, states, map_index)


def _multiple_lanes(areas: dict[str, np.ndarray], b: np.ndarray, t: np.ndarray) -> np.ndarray:
    if isinstance(areas, EgoAreas):
        return areas.multiple_lanes_at(b, t)
    return np.asarray(areas["multiple_lanes"][b, t])


def no_at_fault_collision(
    states: np.ndarray, boxes: np.ndarray, areas: dict[str, np.ndarray], agents: AgentBoxes, ego_radius: float
) -> np.ndarray:
    """NC (B,) ∈ {0, ½, 1} with nuPlan's collision classes and the per-proposal ignore list."""
    n_b, n_t = states.shape[:2]
    b, t, a = _overlaps(boxes[..., :4, :], boxes[..., CENTER, :], ego_radius, agents, np.arange(n_t))
    nc = np.ones(n_b)
    if len(b) == 0:
        return nc
    st = states[b, t]
    speed = np.hypot(st[:, S.VELOCITY_X], st[:, S.VELOCITY_Y])
    behind = _relative_angle(st, agents.centers[t, a]) > BEHIND_DEG
    bumper = boxes[b, t][:, [FRONT_LEFT, FRONT_RIGHT]]
    front = convex_intersects(bumper, agents.corners[t, a])
    lateral_fault = _multiple_lanes(areas, b, t) | areas["non_drivable"][b, t]
    at_fault = (speed > STOPPED_EGO_SPEED) & (agents.stopped[a] | (~behind & (front | lateral_fault)))
    ignored = np.zeros((n_b, agents.centers.shape[1]), bool)
    for step in np.unique(t):  # sequential in time: a non-at-fault contact ignores that object later
        sel = (t == step) & ~ignored[b, a]
        fault = sel & at_fault
        np.minimum.at(nc, b[fault], agents.fault_score[a[fault]])
        ok = sel & ~at_fault
        ignored[b[ok], a[ok]] = True
    return nc


def time_to_collision(
    states: np.ndarray,
    boxes: np.ndarray,
    areas: dict[str, np.ndarray],
    agents: AgentBoxes,
    ego_radius: float,
    dt: float,
) -> np.ndarray:
    """TTC (B,) ∈ {0, 1}: the ego box projected δ ∈ {0, .3, .6, .9} s ahead at its speed meets an agent at t + δ."""
    n_b, n_t = states.shape[:2]
    speed = np.hypot(states[..., S.VELOCITY_X], states[..., S.VELOCITY_Y])
    direction = np.stack([np.cos(states[..., S.HEADING]), np.sin(states[..., S.HEADING])], -1)
    found = []
    for step_idx, k in enumerate(TTC_STEPS):
        shift = (speed * k * dt)[..., None] * direction  # (B, T, 2)
        bb, tt, aa = _overlaps(
            boxes[..., :4, :] + shift[:, :, None],
            boxes[..., CENTER, :] + shift,
            ego_radius,
            agents,
            np.arange(n_t) + k,
        )
        found.append((bb, tt, aa, np.full(len(bb), step_idx)))
    b, t, a, j = (np.concatenate(x) for x in zip(*found))
    ttc = np.ones(n_b)
    if len(b) == 0:
        return ttc
    order = np.lexsort((j, t))
    b, t, a, j = b[order], t[order], a[order], j[order]
    moving = speed[b, t] >= TTC_STOPPED_SPEED
    angle = _relative_angle(states[b, t], agents.centers[t + np.asarray(TTC_STEPS)[j], a])
    risky = _multiple_lanes(areas, b, t) | areas["non_drivable"][b, t] | areas["intersection"][b, t]
    violation = (angle < AHEAD_DEG) | (risky & ~(angle > BEHIND_DEG))
    ignored = np.zeros((n_b, agents.centers.shape[1]), bool)
    group = t * len(TTC_STEPS) + j
    for g in np.unique(group):
        sel = (group == g) & moving & ~ignored[b, a]
        ttc[b[sel & violation]] = 0.0
        ok = sel & ~violation
        ignored[b[ok], a[ok]] = True
    return ttc


def driving_direction(boxes: np.ndarray, areas: dict[str, np.ndarray], w: ScorerWeights) -> np.ndarray:
    """DDC (B,) ∈ {0, ½, 1}: max oncoming progress of the box centre over a sliding 1 s window."""
    center = boxes[..., CENTER, :]
    step = np.zeros(center.shape[:2])
    step[:, 1:] = np.linalg.norm(np.diff(center, axis=1), axis=-1)
    step[~areas["oncoming"]] = 0.0
    csum = np.concatenate([np.zeros((len(step), 1)), np.cumsum(step, axis=1)], axis=1)
    idx = np.arange(boxes.shape[1])
    window = csum[:, idx + 1] - csum[:, np.maximum(idx - w.ddc_horizon_steps, 0)]
    worst = window.max(-1)
    return np.where(worst < w.ddc_compliance, 1.0, np.where(worst < w.ddc_violation, 0.5, 0.0))


def score_states(
    states: np.ndarray,
    scene: MetricScene,
    map_index: MapIndex,
    agents: AgentBoxes,
    centerline: np.ndarray,
    reference: int | None = 0,
    weights: ScorerWeights | None = None,
    dt: float = 0.1,
) -> SubScores:
    """Score simulated states (B, T, NUM_STATES). EP normalisation: with `reference` = i, each proposal is
    normalised by max(progress_i, its own) — NAVSIM's [PDM-Closed, agent] pair per proposal; with None, by the
    batch max (PDM-Closed choosing among its own proposals)."""
    w = weights or ScorerWeights()
    boxes = ego_boxes(states, scene)
    areas = ego_areas(boxes, states, map_index)
    ego_radius = 0.5 * float(np.hypot(scene.front_length + scene.rear_length, scene.width))
    nc = no_at_fault_collision(states, boxes, areas, agents, ego_radius)
    dac = np.where(areas["non_drivable"].any(-1), 0.0, 1.0)
    ddc = driving_direction(boxes, areas, w)
    ttc = time_to_collision(states, boxes, areas, agents, ego_radius, dt)
    c = np.asarray(comfort_checks(states, dt).all(-1), dtype=np.float64)
    s_start, _ = project_to_polyline(centerline, boxes[:, 0, CENTER])
    s_end, _ = project_to_polyline(centerline, boxes[:, -1, CENTER])
    progress = np.clip(s_end - s_start, 0.0, None)
    multi = nc * dac
    raw = progress * multi
    best = np.maximum(raw, raw[reference]) if reference is not None else np.full_like(raw, raw.max())
    with np.errstate(invalid="ignore", divide="ignore"):
        ep = np.where(best > w.progress_threshold, raw / best, np.where(multi == 0.0, 0.0, 1.0))
    total = w.progress + w.ttc + w.comfort + w.driving_direction
    weighted = (w.progress * ep + w.ttc * ttc + w.comfort * c + w.driving_direction * ddc) / total
    return SubScores(nc, dac, ddc, ttc, c, progress, ep, multi * weighted)


# ----- NAVSIM v2 (EPDMS) ----------------------------------------------------------------------------
# Source: navsim/planning/simulation/planner/pdm_planner/scoring/pdm_scorer.py (v2.x, PDMScorerConfig).


@dataclass(frozen=True)
class ScorerWeightsV2:
    """EPDMS = NC·DAC·DDC·TLC · (5·EP + 5·TTC + 2·LK + 2·HC + 2·EC) / 16."""

    progress: float = field(default=5.0, metadata=check(ge=0))
    ttc: float = field(default=5.0, metadata=check(ge=0))
    lane_keeping: float = field(default=2.0, metadata=check(ge=0))
    history_comfort: float = field(default=2.0, metadata=check(ge=0))
    extended_comfort: float = field(default=2.0, metadata=check(ge=0))
    progress_threshold: float = field(default=5.0, metadata=check(ge=0))  # [m]
    ddc_horizon_steps: int = field(default=10, metadata=check(ge=1))  # 1 s
    ddc_compliance: float = field(default=2.0, metadata=check(ge=0))  # [m]
    ddc_violation: float = field(default=6.0, metadata=check(ge=0))  # [m]
    # [m] lateral distance of the box centre to the centerline
    lane_keeping_limit: float = field(default=0.5, metadata=check(ge=0))
    # ceil(2.0 s / 0.1 s) consecutive steps beyond the limit
    lane_keeping_steps: int = field(default=20, metadata=check(ge=1))

    @property
    def weighted_total(self) -> float:
        return self.progress + self.ttc + self.lane_keeping + self.history_comfort + self.extended_comfort


@dataclass
class SubScoresV2:
    """Per-proposal arrays (B,). `score` excludes EC (it needs the previous frame): it is
    multi · (5·EP + 5·TTC + 2·LK + 2·HC)/14; `epdms_with_ec` adds EC with weight 2 (/16)."""

    nc: np.ndarray
    dac: np.ndarray
    ddc: np.ndarray
    tlc: np.ndarray
    ep: np.ndarray
    ttc: np.ndarray
    lk: np.ndarray
    hc: np.ndarray
    progress: np.ndarray
    score: np.ndarray


MULTIPLIERS_V2 = ("nc", "dac", "ddc", "tlc")
WEIGHTED_V2 = ("ep", "ttc", "lk", "hc")  # + "ec", filled in by the aggregation


def history_states(scene: MetricScene, dt: float = 0.1) -> np.ndarray:
    """(H', NUM_STATES) logged past ego states on NAVSIM's history grid: start, start + dt, … < end, the
    last of them dropped (as `_calculate_history_comfort` samples the past trajectory); (0, ·) without history."""
    from drivedistill.sim.bicycle import NUM_STATES

    times, hist = scene.ego_history_times, scene.ego_history
    if len(times) < 2:
        return np.zeros((0, NUM_STATES))
    grid = np.arange(times[0], times[-1] - 1e-9, dt)[:-1]
    out = np.zeros((len(grid), NUM_STATES))
    for col, idx in ((0, S.X), (1, S.Y), (3, S.VELOCITY_X), (4, S.ACCELERATION_X), (5, S.ACCELERATION_Y)):
        out[:, idx] = np.interp(grid, times, hist[:, col])
    out[:, S.HEADING] = np.interp(grid, times, np.unwrap(hist[:, 2]))
    out[:, S.ANGULAR_VELOCITY] = np.interp(grid, times, hist[:, 6])
    if len(grid) > 1:
        out[:, S.ANGULAR_ACCELERATION] = np.gradient(out[:, S.ANGULAR_VELOCITY], dt)
    return out


def _red_light_steps(scene: MetricScene, n_t: int, dt: float) -> np.ndarray:
    """(T, L) bool: red-light polygon l is red at step t (latest sample at or before t·dt)."""
    k = np.searchsorted(scene.agent_times, np.arange(n_t) * dt + 1e-9, side="right") - 1
    return scene.red_light_valid[np.clip(k, 0, len(scene.agent_times) - 1)]


def traffic_light_compliance(boxes: np.ndarray, scene: MetricScene, dt: float) -> np.ndarray:
    """TLC (B,) ∈ {0, 1}: 0 when the ego box touches a red-light polygon while it is red."""
    import shapely

    n_b, n_t = boxes.shape[:2]
    tlc = np.ones(n_b)
    if not scene.red_light_polygons:
        return tlc
    red = _red_light_steps(scene, n_t, dt)
    corners = boxes[..., :4, :]
    lo, hi = corners.min(-2), corners.max(-2)  # (B, T, 2)
    for j, poly in enumerate(scene.red_light_polygons):
        pmin, pmax = poly.min(0), poly.max(0)
        cand = red[None, :, j] & (lo <= pmax).all(-1) & (hi >= pmin).all(-1)
        b, t = np.nonzero(cand & (tlc[:, None] > 0))
        if len(b) == 0:
            continue
        shape = shapely.make_valid(shapely.Polygon(poly))
        hit = shapely.intersects(shapely.polygons(corners[b, t]), shape)
        tlc[b[hit]] = 0.0
    return tlc


def _distance_to_polyline(line: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance (...) of points (..., 2) to the polyline (P, 2), via the nearest vertex of a
    0.5 m resampling and an exact segment distance to its two neighbouring segments."""
    from scipy.spatial import cKDTree

    from drivedistill.geometry.planar import resample_polyline

    dense = resample_polyline(line, 0.5)
    flat = points.reshape(-1, 2)
    _, idx = cKDTree(dense).query(flat)
    best = np.full(len(flat), np.inf)
    for lo in (idx - 1, idx):
        lo = np.clip(lo, 0, len(dense) - 2)
        a, b = dense[lo], dense[lo + 1]
        d = b - a
        t = np.clip(((flat - a) * d).sum(-1) / np.maximum((d**2).sum(-1), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(flat - (a + t[:, None] * d), axis=-1))
    return best.reshape(points.shape[:-1])


def lane_keeping(
    centers: np.ndarray, in_intersection: np.ndarray, centerline: np.ndarray, w: ScorerWeightsV2
) -> np.ndarray:
    """LK (B,) ∈ {0, 1}: 0 when the box centre is > 0.5 m from the centerline for 20 consecutive steps
    (2 s); steps inside an intersection are skipped (they neither count nor reset the run)."""
    exceed = _distance_to_polyline(centerline, centers) > w.lane_keeping_limit
    run = np.zeros(len(centers), np.int64)
    fail = np.zeros(len(centers), bool)
    for t in range(centers.shape[1]):
        run = np.where(in_intersection[:, t], run, np.where(exceed[:, t], run + 1, 0))
        fail |= run >= w.lane_keeping_steps
    return np.where(fail, 0.0, 1.0)


def history_comfort(states: np.ndarray, scene: MetricScene, dt: float = 0.1) -> np.ndarray:
    """HC (B,) ∈ {0, 1}: v2 comfort checks on the logged past states followed by the simulated states;
    1 when the scene has no history (NAVSIM: no past trajectory → comfortable)."""
    from drivedistill.sim.comfort import comfort_checks_v2

    past = history_states(scene, dt)
    if len(past) == 0:
        return np.ones(len(states))
    padded = np.concatenate([np.broadcast_to(past, (len(states), *past.shape)), states], axis=1)
    return np.asarray(comfort_checks_v2(padded, scene.rear_axle_to_center, dt).all(-1), np.float64)


def score_states_v2(
    states: np.ndarray,
    scene: MetricScene,
    map_index: MapIndex,
    agents: AgentBoxes,
    centerline: np.ndarray,
    reference: int | None = 0,
    weights: ScorerWeightsV2 | None = None,
    dt: float = 0.1,
    with_history: bool = True,
) -> SubScoresV2:
    """EPDMS sub-scores of simulated states (B, T, NUM_STATES) — NAVSIM v2's `PDMScorer.score_proposals`.

    Differences from v1.1: DDC and TLC are multipliers; DDC ignores oncoming progress inside
    intersections; TTC is evaluated on the steps whose look-ahead stays within the plan (t ≤ T−1−9);
    EP = clip(progress / max masked progress, 0, 1) (not masked itself); LK and HC weighted 2 each.
    `reference` as in `score_states`. `with_history=False` scores without the past (HC = 1), as NAVSIM
    scores the human plan for the filter."""
    w = weights or ScorerWeightsV2()
    n_b, n_t = states.shape[:2]
    boxes = ego_boxes(states, scene)
    areas = ego_areas(boxes, states, map_index)
    center_inter = map_index.in_intersection(boxes[..., CENTER, :])
    ego_radius = 0.5 * float(np.hypot(scene.front_length + scene.rear_length, scene.width))
    nc = no_at_fault_collision(states, boxes, areas, agents, ego_radius)
    dac = np.where(areas["non_drivable"].any(-1), 0.0, 1.0)
    ddc_areas = {"oncoming": areas["oncoming"] & ~center_inter}
    ddc = driving_direction(boxes, ddc_areas, w)  # type: ignore[arg-type]
    tlc = traffic_light_compliance(boxes, scene, dt)
    last = n_t - 1 - max(TTC_STEPS)
    ttc = time_to_collision(
        states[:, : last + 1], boxes[:, : last + 1], areas.head(last + 1), agents, ego_radius, dt
    )
    lk = lane_keeping(boxes[..., CENTER, :], center_inter, centerline, w)
    hc = history_comfort(states, scene, dt) if with_history else np.ones(n_b)
    s_start, _ = project_to_polyline(centerline, boxes[:, 0, CENTER])
    s_end, _ = project_to_polyline(centerline, boxes[:, -1, CENTER])
    progress = np.clip(s_end - s_start, 0.0, None)
    multi = nc * dac * ddc * tlc
    masked = progress * multi
    norm = (
        np.maximum(masked, masked[reference]) if reference is not None else np.full_like(masked, masked.max())
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ep = np.where(norm > w.progress_threshold, np.clip(progress / norm, 0.0, 1.0), 1.0)
    score = multi * epdms_weighted(ep, ttc, lk, hc, None, w)
    return SubScoresV2(nc, dac, ddc, tlc, ep, ttc, lk, hc, progress, score)


def epdms_weighted(
    ep: np.ndarray, ttc: np.ndarray, lk: np.ndarray, hc: np.ndarray, ec: np.ndarray | None, w: ScorerWeightsV2
) -> np.ndarray:
    """The weighted mean of EPDMS; without EC (None) its weight is left out, as NAVSIM's per-proposal score."""
    total = w.progress * ep + w.ttc * ttc + w.lane_keeping * lk + w.history_comfort * hc
    if ec is None:
        return total / (w.weighted_total - w.extended_comfort)
    return (total + w.extended_comfort * ec) / w.weighted_total
