"""The speed paths of the PDMS scorer and simulator return exactly what the plain computations return:
angle wrapping, ego boxes, route progress, lane keeping's distance test, the lazily evaluated
multiple-lanes test and the shared NC / TTC contacts (bit for bit, not to a tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from drivedistill.geometry.planar import (
    box_corners,
    convex_intersects,
    normalize_angle,
    project_to_polyline,
    resample_polyline,
)
from drivedistill.geometry.scene_index import MapIndex, replay_agents
from drivedistill.sim.bicycle import S, wrap_angle
from drivedistill.sim.lqr import simulate_plans
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene
from drivedistill.sim.scorer import (
    _AgentFrames,
    _arc_length,
    _beyond_polyline,
    _segment_meets_box,
    ego_areas,
    ego_boxes,
    ego_contacts,
    no_at_fault_collision,
    time_to_collision,
)


def _scene_and_states(k: int = 48, seed: int = 0):  # type: ignore[no-untyped-def]
    scene = straight_road_scene(
        speed=10.0,
        agents=[Agent(30, 0, 5), Agent(60, 4, 8), Agent(-20, 0, 12), Agent(45, 4), Agent(18, 3.5, 9)],
    )
    rng = np.random.default_rng(seed)
    t = np.arange(1, 9)[None, :, None] * 0.5
    plans = straight_plan(10.0)[None] + rng.normal(0, 1, (k, 1, 3)) * np.array([3.0, 1.5, 0.08]) * t
    return scene, simulate_plans(scene, plans)


def test_wrap_angle_is_normalize_angle_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.5, 3.0, np.pi, 40.0):
        angles = rng.uniform(-scale, scale, 10_000)
        angles[:4] = (np.pi, -np.pi, 0.0, -0.0)
        fast, plain = wrap_angle(angles), normalize_angle(angles)
        assert np.array_equal(fast, plain) and np.array_equal(np.signbit(fast), np.signbit(plain))
    with_nan = np.array([np.nan, 1.0, 7.0])
    assert np.array_equal(wrap_angle(with_nan), normalize_angle(with_nan), equal_nan=True)


def test_ego_boxes_equal_box_corners() -> None:
    scene, states = _scene_and_states()
    heading = states[..., S.HEADING]
    d = scene.rear_axle_to_center
    center = states[..., [S.X, S.Y]] + d * np.stack([np.cos(heading), np.sin(heading)], -1)
    corners = box_corners(center, heading, scene.front_length + scene.rear_length, scene.width)
    expected = np.concatenate([corners, center[..., None, :]], axis=-2)
    assert np.array_equal(ego_boxes(states, scene), expected)


def test_arc_length_equals_project_to_polyline() -> None:
    rng = np.random.default_rng(1)
    line = np.cumsum(rng.normal(0, 1, (40, 2)) + np.array([2.0, 0.0]), axis=0)
    points = line[rng.integers(0, len(line), 500)] + rng.normal(0, 3, (500, 2))
    points[:3] = line[:3]  # on vertices
    assert np.array_equal(_arc_length(line, points), project_to_polyline(line, points)[0])


def _plain_beyond(line: np.ndarray, points: np.ndarray, limit: float) -> np.ndarray:
    """The plain definition: nearest vertex of the 0.5 m resampling, distance to its two segments."""
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
    return (best > limit).reshape(points.shape[:-1])


@pytest.mark.parametrize("limit", [0.5, 0.05, 2.0])
def test_beyond_polyline_equals_the_plain_distance_test(limit: float) -> None:
    rng = np.random.default_rng(2)
    s = np.linspace(0, 60, 25)
    line = np.stack([s, 4.0 * np.sin(s / 9.0)], -1)  # a curved centerline
    near = line[rng.integers(0, len(line), (64, 41))] + rng.normal(0, limit, (64, 41, 2))
    far = rng.uniform(-50, 120, (16, 41, 2))
    points = np.concatenate([near, far])
    points[0, 0] = line[5]  # on the line
    got = _beyond_polyline(line, points, limit)
    expected = _plain_beyond(line, points, limit)
    assert got.shape == (80, 41) and np.array_equal(got, expected)
    assert expected.any() and not expected.all()  # both outcomes exercised


def test_lazy_multiple_lanes_and_shared_contacts_equal_the_full_masks() -> None:
    scene, states = _scene_and_states(64, seed=3)
    mi = MapIndex(scene)
    agents = replay_agents(scene)
    boxes = ego_boxes(states, scene)
    radius = 0.5 * float(np.hypot(scene.front_length + scene.rear_length, scene.width))
    frames = _AgentFrames.of(agents)
    lazy = ego_areas(boxes, states, mi)
    full = {k: np.asarray(v) for k, v in lazy.items()}
    full["multiple_lanes"] = mi.multiple_lanes(boxes[..., :4, :])
    contacts = ego_contacts(boxes, radius, frames)
    assert len(contacts[0]) > 0  # the proposals do touch agents
    nc_full = no_at_fault_collision(states, boxes, full, agents, radius)
    nc_lazy = no_at_fault_collision(
        states, boxes, ego_areas(boxes, states, mi), agents, radius, frames, contacts
    )
    assert np.array_equal(nc_full, nc_lazy) and (nc_full < 1).any()
    ttc_full = time_to_collision(states, boxes, full, agents, radius, 0.1)
    ttc_lazy = time_to_collision(
        states, boxes, ego_areas(boxes, states, mi), agents, radius, 0.1, frames, contacts
    )
    assert np.array_equal(ttc_full, ttc_lazy) and (ttc_full < 1).any()
    # v2 evaluates TTC on the first steps only, with the contacts of the whole horizon
    n = 32
    head = ego_areas(boxes, states, mi).head(n)
    short_full = {k: v[:, :n] for k, v in full.items()}
    assert np.array_equal(
        time_to_collision(states[:, :n], boxes[:, :n], short_full, agents, radius, 0.1),
        time_to_collision(states[:, :n], boxes[:, :n], head, agents, radius, 0.1, frames, contacts),
    )


def test_segment_meets_box_equals_convex_intersects() -> None:
    rng = np.random.default_rng(4)
    n = 5000
    seg = rng.uniform(-4, 4, (n, 2, 2))
    box = box_corners(rng.uniform(-2, 2, (n, 2)), rng.uniform(-3.2, 3.2, n), rng.uniform(1, 6, n), 2.0)
    # exactly touching: integer segments against axis-aligned 2 m boxes at integer centres
    seg[:500] = np.round(seg[:500])
    box[:500] = box_corners(np.round(rng.uniform(-2, 2, (500, 2))), np.zeros(500), 2.0, 2.0)
    got, expected = _segment_meets_box(seg, box), convex_intersects(seg, box)
    assert np.array_equal(got, expected) and 0.1 < expected.mean() < 0.9
