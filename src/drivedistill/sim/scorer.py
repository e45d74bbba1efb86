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
    REAR_LEFT,
    REAR_RIGHT,
    polyline_arclength,
)
from drivedistill.geometry.scene_index import AgentBoxes, MapIndex
from drivedistill.sim.bicycle import S
from drivedistill.sim.comfort import comfort_checks
from drivedistill.sim.region import scene_regions

STOPPED_EGO_SPEED = 5e-2  # [m/s] collision classification (ego stopped → not at fault)
TTC_STOPPED_SPEED = 5e-3  # [m/s] TTC skipped below this ego speed
TTC_STEPS = (0, 3, 6, 9)  # look-ahead in 0.1 s steps: δ = 0, 0.3, 0.6, 0.9 s (δ = 0 first: the contacts)
AHEAD_DEG, BEHIND_DEG = 20.0, 150.0


@dataclass(frozen=True)
class _SharedWeights:
    """What v1.1 and v2 aggregate alike: EP and TTC weights, EP's progress threshold, DDC's window/bounds."""

    progress: float = field(default=5.0, metadata=check(ge=0))
    ttc: float = field(default=5.0, metadata=check(ge=0))
    # [m] below this max progress, EP = 1
    progress_threshold: float = field(default=5.0, metadata=check(ge=0))
    ddc_horizon_steps: int = field(default=10, metadata=check(ge=1))  # 1 s
    ddc_compliance: float = field(default=2.0, metadata=check(ge=0))  # [m]
    ddc_violation: float = field(default=6.0, metadata=check(ge=0))  # [m]


@dataclass(frozen=True)
class ScorerWeights(_SharedWeights):
    """v1.1 aggregation: PDMS = NC·DAC·(5·EP + 5·TTC + 2·C)/12 (DDC weight 0)."""

    comfort: float = field(default=2.0, metadata=check(ge=0))
    driving_direction: float = field(default=0.0, metadata=check(ge=0))


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
    """(B, T, 5, 2): corners FL, RL, RR, FR and the box centre of the ego at the simulated states
    (`geometry.planar.box_corners`' arithmetic, written into one array; the heading's cos / sin once)."""
    heading = states[..., S.HEADING]
    d = scene.rear_axle_to_center
    c, s = np.cos(heading), np.sin(heading)
    out = np.empty((*heading.shape, 5, 2))
    cx = out[..., CENTER, 0] = states[..., S.X] + d * c
    cy = out[..., CENTER, 1] = states[..., S.Y] + d * s
    hl, hw = 0.5 * np.asarray(scene.front_length + scene.rear_length), 0.5 * np.asarray(scene.width)
    fx, fy = c * hl, s * hl  # half-length along the heading
    lx, ly = -s * hw, c * hw  # half-width to the left
    out[..., FRONT_LEFT, 0], out[..., FRONT_LEFT, 1] = cx + fx + lx, cy + fy + ly
    out[..., REAR_LEFT, 0], out[..., REAR_LEFT, 1] = cx - fx + lx, cy - fy + ly
    out[..., REAR_RIGHT, 0], out[..., REAR_RIGHT, 1] = cx - fx - lx, cy - fy - ly
    out[..., FRONT_RIGHT, 0], out[..., FRONT_RIGHT, 1] = cx + fx - lx, cy + fy - ly
    return out


def _relative_angle(states_bt: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Angle [deg] between the ego heading and rear axle → target, for rows of states (N, NUM_STATES)."""
    heading = states_bt[:, S.HEADING]
    return _angle_to(
        states_bt[:, S.X],
        states_bt[:, S.Y],
        np.cos(heading),
        np.sin(heading),
        target_xy[:, 0],
        target_xy[:, 1],
    )


def _angle_to(
    x: np.ndarray, y: np.ndarray, cos_h: np.ndarray, sin_h: np.ndarray, tx: np.ndarray, ty: np.ndarray
) -> np.ndarray:
    """`_relative_angle` from components (N,): rear axle x, y, cos / sin of the heading, target tx, ty."""
    vx, vy = tx - x, ty - y
    norm = np.sqrt(vx * vx + vy * vy)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (cos_h * vx + sin_h * vy) / norm
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _half_edges(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-edge vectors (..., 2) of boxes given by corners (..., 4, 2) FL, RL, RR, FR: along the length
    (rear → front) and along the width (right → left)."""
    return 0.5 * (corners[..., FRONT_LEFT, :] - corners[..., REAR_LEFT, :]), 0.5 * (
        corners[..., FRONT_LEFT, :] - corners[..., FRONT_RIGHT, :]
    )


def _boxes_intersect(
    ca: np.ndarray, ua: np.ndarray, va: np.ndarray, cb: np.ndarray, ub: np.ndarray, vb: np.ndarray
) -> np.ndarray:
    """(N,) bool: oriented boxes a and b (centres c (N, 2), half-edge vectors u, v (N, 2)) touch or overlap.

    The separating-axis test on the boxes' four edge normals (the edge directions of the other box), in
    the centre / half-extent form: boxes are separated along an axis w when |d·w| exceeds the sum of the
    projected half-edges |u·w| + |v·w| of both boxes. Equal to `geometry.planar.convex_intersects` on the
    corners (touching counts as intersecting) up to float rounding of exactly touching boxes."""
    dx, dy = cb[:, 0] - ca[:, 0], cb[:, 1] - ca[:, 1]
    uax, uay, vax, vay = ua[:, 0], ua[:, 1], va[:, 0], va[:, 1]
    ubx, uby, vbx, vby = ub[:, 0], ub[:, 1], vb[:, 0], vb[:, 1]
    ua_ub = np.abs(uax * ubx + uay * uby)
    ua_vb = np.abs(uax * vbx + uay * vby)
    va_ub = np.abs(vax * ubx + vay * uby)
    va_vb = np.abs(vax * vbx + vay * vby)
    ua_va = np.abs(uax * vax + uay * vay)
    ub_vb = np.abs(ubx * vbx + uby * vby)
    ok = np.abs(dx * uax + dy * uay) <= uax * uax + uay * uay + ua_va + ua_ub + ua_vb
    ok &= np.abs(dx * vax + dy * vay) <= vax * vax + vay * vay + ua_va + va_ub + va_vb
    ok &= np.abs(dx * ubx + dy * uby) <= ubx * ubx + uby * uby + ub_vb + ua_ub + va_ub
    ok &= np.abs(dx * vbx + dy * vby) <= vbx * vbx + vby * vby + ub_vb + ua_vb + va_vb
    return ok


def _segment_meets_box(seg: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(N,) bool: segments (N, 2, 2) touch or overlap boxes (N, 4, 2) — `geometry.planar.convex_intersects`
    with the same arithmetic (edge normals (−e_y, e_x), projections n_x·x + n_y·y, exact min / max) on
    separate (N,) arrays instead of stacked (N, 5, 4) ones."""
    sx, sy = (seg[:, 0, 0], seg[:, 1, 0]), (seg[:, 0, 1], seg[:, 1, 1])
    cx, cy = [box[:, j, 0] for j in range(4)], [box[:, j, 1] for j in range(4)]
    axes = [(-(sy[1] - sy[0]), sx[1] - sx[0])]
    axes += [(-(cy[(j + 1) % 4] - cy[j]), cx[(j + 1) % 4] - cx[j]) for j in range(4)]
    separated = np.zeros(len(seg), bool)
    for nx, ny in axes:
        p0, p1 = nx * sx[0] + ny * sy[0], nx * sx[1] + ny * sy[1]
        q = [nx * cx[j] + ny * cy[j] for j in range(4)]
        q_min = np.minimum(np.minimum(q[0], q[1]), np.minimum(q[2], q[3]))
        q_max = np.maximum(np.maximum(q[0], q[1]), np.maximum(q[2], q[3]))
        separated |= (np.maximum(p0, p1) < q_min) | (q_max < np.minimum(p0, p1))
    return ~separated


@dataclass
class _AgentFrames:
    """Agent boxes in centre / half-edge form on the 0.1 s grid: u, v (T, A, 2) (see `_half_edges`)."""

    agents: AgentBoxes
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def of(cls, agents: AgentBoxes) -> _AgentFrames:
        return cls(agents, *_half_edges(agents.corners))


def _overlaps(
    centers: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    radius: float,
    frames: _AgentFrames,
    steps: np.ndarray,
    ego_steps: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Indices (b, s, a) where the ego boxes (centres (B, S, 2); half-edge vectors u, v (B, T, 2) taken at
    step `ego_steps[s]`, default s) overlap agents at grid steps `steps` (S,).

    (step, agent) pairs are first reduced to those whose agent circle meets the bounding box of all
    proposals' ego circles at that step (one (S, A) test), so the (B, P) circle prefilter runs over the
    few nearby pairs only — on city logs most of the hundreds of tracks are far from every proposal —
    and the exact box test over the pairs that pass it. The candidates' boxes are gathered by flat
    indices into contiguous (N, 2) rows (one `np.take` each)."""
    agents = frames.agents
    n_s = centers.shape[1]
    in_range = steps < agents.num_steps
    st = np.minimum(steps, agents.num_steps - 1)
    a_centers = agents.centers[st]  # (S, A, 2)
    valid = agents.valid[st] & in_range[:, None]
    pad = (radius + agents.radius)[None, :, None]
    lo, hi = centers.min(0)[:, None], centers.max(0)[:, None]  # (S, 1, 2) over proposals
    with np.errstate(invalid="ignore"):
        near = valid & ((a_centers >= lo - pad) & (a_centers <= hi + pad)).all(-1)
    tn, an = np.nonzero(near)  # the (step, agent) pairs near some proposal
    if len(tn) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    # circle prefilter in float32 relative to the batch's mean position, with a 1 cm margin: a superset
    # of the float64 test (rounding ≪ 1 cm at scene scale), the exact box test below decides
    mid = 0.5 * (lo.min(0) + hi.max(0))  # (1, 2) the middle of the batch's bounding box
    ec = (centers - mid).astype(np.float32)
    ac = (a_centers[tn, an] - mid[0]).astype(np.float32)  # (P, 2)
    dx = ec[:, tn, 0] - ac[None, :, 0]  # (B, P)
    dy = ec[:, tn, 1] - ac[None, :, 1]
    reach = ((radius + agents.radius[an] + 0.01) ** 2).astype(np.float32)
    b, k = np.nonzero(dx * dx + dy * dy <= reach[None])
    t, a = tn[k], an[k]
    n_a = agents.centers.shape[1]
    ego = b * n_s + t if ego_steps is None else b * u.shape[1] + ego_steps[t]
    other = st[t] * n_a + a
    hit = _boxes_intersect(
        np.take(centers.reshape(-1, 2), b * n_s + t, axis=0),
        np.take(u.reshape(-1, 2), ego, axis=0),
        np.take(v.reshape(-1, 2), ego, axis=0),
        np.take(agents.centers.reshape(-1, 2), other, axis=0),
        np.take(frames.u.reshape(-1, 2), other, axis=0),
        np.take(frames.v.reshape(-1, 2), other, axis=0),
    )
    return b[hit], t[hit], a[hit]


class EgoAreas(dict):  # type: ignore[type-arg]
    """(B, T) bool masks "non_drivable", "oncoming", "intersection" (rear axle in a junction); the costly
    "multiple_lanes" is evaluated only where it is read — at the (b, t) of the collision / TTC contacts
    whose outcome it decides — with `multiple_lanes_at(b, t)` (per box, so identical to the full mask)."""

    def __init__(self, boxes: np.ndarray, states: np.ndarray, map_index: MapIndex) -> None:
        corners = boxes[..., :4, :]
        regions = scene_regions(map_index)  # exact point-in-polygon, answered mostly by grid look-up
        super().__init__(
            non_drivable=np.asarray(~regions.drivable.contains(corners).all(-1)),
            oncoming=~regions.on_route.contains(boxes[..., CENTER, :]),
            intersection=regions.intersection.contains(states[..., [S.X, S.Y]]),
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
        """multiple_lanes at the boxes (b, t), each box tested once (memoised across NC and TTC)."""
        if "multiple_lanes" in self:
            return np.asarray(self["multiple_lanes"][b, t])
        if len(b) == 0:
            return np.zeros(0, bool)
        known = self.__dict__.setdefault("_ml_known", np.full(self.corners.shape[:2], -1, np.int8))
        todo = np.unique(np.ravel_multi_index((b, t), known.shape)[known[b, t] < 0])
        if len(todo):
            tb, tt = np.unravel_index(todo, known.shape)
            known[tb, tt] = np.asarray(self.map_index.multiple_lanes(self.corners[tb, tt]))
        return known[b, t] == 1

    def head(self, n: int) -> EgoAreas:
        """The masks of the first n steps."""
        out = EgoAreas.__new__(EgoAreas)
        dict.__init__(out, {k: v[:, :n] for k, v in self.items()})
        out.corners, out.map_index = self.corners[:, :n], self.map_index
        known = self.__dict__.setdefault("_ml_known", np.full(self.corners.shape[:2], -1, np.int8))
        out.__dict__["_ml_known"] = known[:, :n]  # a view: the memo is shared with the full-length masks
        return out


def ego_areas(boxes: np.ndarray, states: np.ndarray, map_index: MapIndex) -> EgoAreas:
    """(B, T) bool masks: multiple_lanes (lazy), non_drivable, oncoming, intersection (rear axle in a junction)."""
    return EgoAreas(boxes, states, map_index)


def _multiple_lanes(areas: dict[str, np.ndarray], b: np.ndarray, t: np.ndarray) -> np.ndarray:
    if isinstance(areas, EgoAreas):
        return areas.multiple_lanes_at(b, t)
    return np.asarray(areas["multiple_lanes"][b, t])


def _first_time(n_b: int, n_a: int, b: np.ndarray, a: np.ndarray, when: np.ndarray) -> np.ndarray:
    """(B, A) int: the smallest `when` among the entries (b, a), a large sentinel where there is none."""
    first = np.full((n_b, n_a), np.iinfo(np.int64).max)
    np.minimum.at(first, (b, a), when)
    return first


def no_at_fault_collision(
    states: np.ndarray,
    boxes: np.ndarray,
    areas: dict[str, np.ndarray],
    agents: AgentBoxes,
    ego_radius: float,
    frames: _AgentFrames | None = None,
    contacts: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """NC (B,) ∈ {0, ½, 1} with nuPlan's collision classes and the per-proposal ignore list.

    nuPlan walks the steps in order: a contact that is not at fault puts the object on the proposal's
    ignore list for all later steps. Equivalently (one pass, no loop over steps): an at-fault contact
    counts when it happens before the first not-at-fault contact with the same object. `contacts`: the
    (b, t, a) of `ego_contacts` when the caller has them (they are TTC's δ = 0 contacts too)."""
    frames = frames or _AgentFrames.of(agents)
    n_b = states.shape[0]
    b, t, a = contacts if contacts is not None else ego_contacts(boxes, ego_radius, frames)
    nc = np.ones(n_b)
    if len(b) == 0:
        return nc
    st = states[b, t]
    speed = np.hypot(st[:, S.VELOCITY_X], st[:, S.VELOCITY_Y])
    behind = _relative_angle(st, agents.centers[t, a]) > BEHIND_DEG
    # the bumper and lane tests only where they decide: a moving ego, an object not stopped, not behind
    # (elsewhere at_fault is known without them); multiple lanes also only without a frontal contact and
    # on the drivable area
    open_ = np.flatnonzero((speed > STOPPED_EGO_SPEED) & ~agents.stopped[a] & ~behind)
    front = np.zeros(len(b), bool)
    bumper = boxes[b[open_], t[open_]][:, [FRONT_LEFT, FRONT_RIGHT]]
    front[open_] = _segment_meets_box(bumper, agents.corners[t[open_], a[open_]])
    lateral_fault = areas["non_drivable"][b, t]
    ask = open_[~front[open_] & ~lateral_fault[open_]]
    lateral_fault[ask] = _multiple_lanes(areas, b[ask], t[ask])
    at_fault = (speed > STOPPED_EGO_SPEED) & (agents.stopped[a] | (~behind & (front | lateral_fault)))
    ignored_from = _first_time(n_b, agents.centers.shape[1], b[~at_fault], a[~at_fault], t[~at_fault])
    fault = at_fault & (t < ignored_from[b, a])
    np.minimum.at(nc, b[fault], agents.fault_score[a[fault]])
    return nc


def ego_contacts(boxes: np.ndarray, ego_radius: float, frames: _AgentFrames) -> tuple[np.ndarray, ...]:
    """(b, t, a) where the ego boxes (B, T, 5, 2) touch agent a at step t (shared by NC and TTC's δ = 0)."""
    u, v = _half_edges(boxes[..., :4, :])
    return _overlaps(boxes[..., CENTER, :], u, v, ego_radius, frames, np.arange(boxes.shape[1]))


def time_to_collision(
    states: np.ndarray,
    boxes: np.ndarray,
    areas: dict[str, np.ndarray],
    agents: AgentBoxes,
    ego_radius: float,
    dt: float,
    frames: _AgentFrames | None = None,
    contacts: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """TTC (B,) ∈ {0, 1}: the ego box projected δ ∈ {0, .3, .6, .9} s ahead at its speed meets an agent at t + δ.

    The look-aheads δ > 0 are searched in one call (stacked along the time axis); δ = 0 are the plain
    contacts, `contacts` ((b, t, a) of `ego_contacts` over at least the first T steps) when given. nuPlan
    walks (t, δ) in order and ignores an object after a contact that is not a violation; as in
    `no_at_fault_collision`, a violation counts when it comes before the first such contact with the
    same object."""
    frames = frames or _AgentFrames.of(agents)
    n_b, n_t = states.shape[:2]
    n_j = len(TTC_STEPS)
    speed = np.hypot(states[..., S.VELOCITY_X], states[..., S.VELOCITY_Y])
    direction = np.stack([np.cos(states[..., S.HEADING]), np.sin(states[..., S.HEADING])], -1)
    center = boxes[..., CENTER, :]
    u, v = _half_edges(boxes[..., :4, :])
    lookahead = np.asarray(TTC_STEPS)
    shift = (speed * dt)[..., None] * direction  # (B, T, 2) per 0.1 s of look-ahead
    centers = np.concatenate([center + k * shift for k in TTC_STEPS[1:]], axis=1)  # (B, (J-1)·T, 2)
    steps = (np.arange(n_t)[None] + lookahead[1:, None]).reshape(-1)
    bb, tj, aj = _overlaps(centers, u, v, ego_radius, frames, steps, np.tile(np.arange(n_t), n_j - 1))
    if contacts is None:
        b0, t0, a0 = _overlaps(center, u, v, ego_radius, frames, np.arange(n_t))
    else:
        keep = contacts[1] < n_t
        b0, t0, a0 = (c[keep] for c in contacts)
    ttc = np.ones(n_b)
    if len(bb) + len(b0) == 0:
        return ttc
    b = np.concatenate([b0, bb])
    a = np.concatenate([a0, aj])
    j = np.concatenate([np.zeros(len(b0), np.int64), tj // n_t + 1])
    t = np.concatenate([t0, tj % n_t])
    flat = b * n_t + t
    moving = np.take(speed.reshape(-1), flat) >= TTC_STOPPED_SPEED
    rows = np.take(states.reshape(-1, states.shape[-1]), flat, axis=0)
    cos_sin = np.take(direction.reshape(-1, 2), flat, axis=0)
    target = np.take(agents.centers.reshape(-1, 2), (t + lookahead[j]) * agents.centers.shape[1] + a, axis=0)
    angle = _angle_to(rows[:, S.X], rows[:, S.Y], cos_sin[:, 0], cos_sin[:, 1], target[:, 0], target[:, 1])
    risky = areas["non_drivable"][b, t] | areas["intersection"][b, t]
    # multiple lanes only where it decides: a moving ego (a stopped one is never at risk), neither ahead
    # (a violation anyway) nor behind (none)
    ask = moving & ~risky & (angle >= AHEAD_DEG) & ~(angle > BEHIND_DEG)
    risky[ask] = _multiple_lanes(areas, b[ask], t[ask])
    violation = (angle < AHEAD_DEG) | (risky & ~(angle > BEHIND_DEG))
    group = t * n_j + j  # nuPlan's order: time, then look-ahead
    ok = moving & ~violation
    ignored_from = _first_time(n_b, agents.centers.shape[1], b[ok], a[ok], group[ok])
    ttc[b[moving & violation & (group < ignored_from[b, a])]] = 0.0
    return ttc


def driving_direction(boxes: np.ndarray, areas: dict[str, np.ndarray], w: _SharedWeights) -> np.ndarray:
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


def _arc_length(line: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Arc length (N,) of the nearest point on `line` (P, 2) for points (N, 2): the first output of
    `geometry.planar.project_to_polyline`, with the same arithmetic on separate x / y arrays."""
    ax, ay = line[:-1, 0], line[:-1, 1]
    dx, dy = line[1:, 0] - ax, line[1:, 1] - ay
    seg_len2 = np.maximum(dx * dx + dy * dy, 1e-12)
    px, py = points[:, :1], points[:, 1:]  # (N, 1)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / seg_len2, 0.0, 1.0)  # (N, S)
    ex, ey = px - (ax + t * dx), py - (ay + t * dy)
    best = (ex * ex + ey * ey).argmin(-1)
    t_best = np.take_along_axis(t, best[:, None], -1)[:, 0]
    return polyline_arclength(line)[best] + t_best * np.sqrt(seg_len2[best])


def route_progress(centerline: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(B,) progress [m] of the box centre along the centerline from the first to the last step, ≥ 0.
    The start is projected once when every proposal starts from the same box (the simulated batches)."""
    start = boxes[:, 0, CENTER]
    same = bool((start == start[:1]).all())
    s_start = _arc_length(centerline, start[:1] if same else start)
    s_end = _arc_length(centerline, boxes[:, -1, CENTER])
    return np.clip(s_end - s_start, 0.0, None)


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
    frames = _AgentFrames.of(agents)
    contacts = ego_contacts(boxes, ego_radius, frames)
    nc = no_at_fault_collision(states, boxes, areas, agents, ego_radius, frames, contacts)
    dac = np.where(areas["non_drivable"].any(-1), 0.0, 1.0)
    ddc = driving_direction(boxes, areas, w)
    ttc = time_to_collision(states, boxes, areas, agents, ego_radius, dt, frames, contacts)
    c = np.asarray(comfort_checks(states, dt).all(-1), dtype=np.float64)
    progress = route_progress(centerline, boxes)
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
class ScorerWeightsV2(_SharedWeights):
    """EPDMS = NC·DAC·DDC·TLC · (5·EP + 5·TTC + 2·LK + 2·HC + 2·EC) / 16."""

    lane_keeping: float = field(default=2.0, metadata=check(ge=0))
    history_comfort: float = field(default=2.0, metadata=check(ge=0))
    extended_comfort: float = field(default=2.0, metadata=check(ge=0))
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


def _beyond_polyline(line: np.ndarray, points: np.ndarray, limit: float) -> np.ndarray:
    """(...) bool: the Euclidean distance of points (..., 2) to the polyline (P, 2) exceeds `limit` [m] —
    the distance taken via the nearest vertex of a 0.5 m resampling and an exact segment distance to its
    two neighbouring segments.

    That distance is at most the nearest vertex's distance (the vertex ends both segments) and at least
    the distance to the whole resampled polyline, itself at least (nearest vertex's distance) − h, h the
    longest half segment. So the vertex distance decides alone outside the band [limit, limit + h] (with
    1e-9 m for rounding), and the nearest-vertex query stops looking at limit + h (no vertex that close:
    beyond); only the points in the band take the segment distances."""
    from scipy.spatial import cKDTree

    from drivedistill.geometry.planar import resample_polyline

    dense = resample_polyline(line, 0.5)
    flat = points.reshape(-1, 2)
    half = 0.5 * float(np.sqrt((np.diff(dense, axis=0) ** 2).sum(-1)).max())
    vdist, idx = cKDTree(dense).query(flat, distance_upper_bound=limit + half + 1e-6)
    out = vdist > limit
    band = np.flatnonzero((vdist >= limit - 1e-9) & (vdist <= limit + half + 1e-9))
    idx = idx[band]
    px, py = flat[band, 0], flat[band, 1]
    best = np.full(len(band), np.inf)
    for lo in (idx - 1, idx):
        lo = np.clip(lo, 0, len(dense) - 2)
        ax, ay = dense[lo, 0], dense[lo, 1]
        dx, dy = dense[lo + 1, 0] - ax, dense[lo + 1, 1] - ay
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        ex, ey = px - (ax + t * dx), py - (ay + t * dy)
        best = np.minimum(best, np.sqrt(ex * ex + ey * ey))
    out[band] = best > limit
    return out.reshape(points.shape[:-1])


def lane_keeping(
    centers: np.ndarray, in_intersection: np.ndarray, centerline: np.ndarray, w: ScorerWeightsV2
) -> np.ndarray:
    """LK (B,) ∈ {0, 1}: 0 when the box centre is > 0.5 m from the centerline for 20 consecutive steps
    (2 s); steps inside an intersection are skipped (they neither count nor reset the run)."""
    exceed = _beyond_polyline(centerline, centers, w.lane_keeping_limit)
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
    solo: np.ndarray | None = None,
) -> SubScoresV2:
    """EPDMS sub-scores of simulated states (B, T, NUM_STATES) — NAVSIM v2's `PDMScorer.score_proposals`.

    Differences from v1.1: DDC and TLC are multipliers; DDC ignores oncoming progress inside
    intersections; TTC is evaluated on the steps whose look-ahead stays within the plan (t ≤ T−1−9);
    EP = clip(progress / max masked progress, 0, 1) (not masked itself); LK and HC weighted 2 each.
    `reference` as in `score_states`. `with_history=False` scores without the past (HC = 1), as NAVSIM
    scores the human plan for the filter; `solo` (B,) bool marks rows scored as if alone (HC = 1 and EP
    normalised by their own progress) — the human plan of the filter riding in the proposals' batch
    (every other sub-metric is per row, so the batch does not change them)."""
    w = weights or ScorerWeightsV2()
    n_b, n_t = states.shape[:2]
    boxes = ego_boxes(states, scene)
    areas = ego_areas(boxes, states, map_index)
    center_inter = scene_regions(map_index).intersection.contains(boxes[..., CENTER, :])
    ego_radius = 0.5 * float(np.hypot(scene.front_length + scene.rear_length, scene.width))
    frames = _AgentFrames.of(agents)
    contacts = ego_contacts(boxes, ego_radius, frames)
    nc = no_at_fault_collision(states, boxes, areas, agents, ego_radius, frames, contacts)
    dac = np.where(areas["non_drivable"].any(-1), 0.0, 1.0)
    ddc_areas = {"oncoming": areas["oncoming"] & ~center_inter}
    ddc = driving_direction(boxes, ddc_areas, w)  # type: ignore[arg-type]
    tlc = traffic_light_compliance(boxes, scene, dt)
    last = n_t - 1 - max(TTC_STEPS)
    ttc = time_to_collision(
        states[:, : last + 1],
        boxes[:, : last + 1],
        areas.head(last + 1),
        agents,
        ego_radius,
        dt,
        frames,
        contacts,
    )
    lk = lane_keeping(boxes[..., CENTER, :], center_inter, centerline, w)
    hc = history_comfort(states, scene, dt) if with_history else np.ones(n_b)
    if solo is not None:
        hc = np.where(solo, 1.0, hc)
    progress = route_progress(centerline, boxes)
    multi = nc * dac * ddc * tlc
    masked = progress * multi
    norm = (
        np.maximum(masked, masked[reference]) if reference is not None else np.full_like(masked, masked.max())
    )
    if solo is not None:
        norm = np.where(solo, masked, norm)
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
