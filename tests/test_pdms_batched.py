"""The vectorised PDMS machinery equals its plain definitions: batched scoring = one proposal at a time,
grid point-in-region = shapely, closed-form LQR gain = the cumulative-sum recurrences, tridiagonal
curvature fit = the dense least-squares fit, in-batch human filter = the standalone one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.scene_index import MapIndex
from drivedistill.metrics.pdms import (
    PDMSConfig,
    human_filter_mask,
    score_proposals,
    score_proposals_v2,
)
from drivedistill.sim.bicycle import BicycleParams
from drivedistill.sim.lqr import (
    LQRParams,
    _horizon_sums,
    _lateral_command,
    _lateral_command_closed_form,
    fit_speed_curvature,
)
from drivedistill.sim.pdm_closed import pdm_closed_plan
from drivedistill.sim.region import GridRegion
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene

V2 = PDMSConfig(protocol="navsim-v2")


def _busy_scene() -> MetricScene:
    return straight_road_scene(
        speed=10.0,
        agents=[Agent(30, 0, 5), Agent(60, 4, 8), Agent(-20, 0, 12), Agent(45, 4), Agent(18, 3.5, 9)],
    )


def _random_proposals(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1, 9)[None, :, None] * 0.5
    base = straight_plan(10.0)[None]
    return base + rng.normal(0, 1, (k, 1, 3)) * np.array([3.0, 1.5, 0.08]) * t


@pytest.mark.parametrize("protocol", ["navsim-v1.1", "navsim-v2"])
def test_batched_scores_equal_one_proposal_at_a_time(protocol: str) -> None:
    scene = _busy_scene()
    cfg = PDMSConfig(protocol=protocol)
    props = _random_proposals(16)
    mi = MapIndex(scene)
    score = score_proposals_v2 if protocol == "navsim-v2" else score_proposals
    reference = pdm_closed_plan(scene, mi, dataclasses.replace(cfg.pdm_closed, selection=protocol))
    batch = score(scene, props, cfg, reference=reference, map_index=mi)
    keys = (
        ("pdms", "nc", "dac", "ddc", "ttc", "ep", "c") if protocol == "navsim-v1.1" else tuple(batch.scores)
    )
    seen = set()
    for i in range(len(props)):
        one = score(scene, props[i : i + 1], cfg, reference=reference, map_index=mi)
        for k in keys:
            a = getattr(batch, k)[i] if protocol == "navsim-v1.1" else batch.scores[k][i]
            b = getattr(one, k)[0] if protocol == "navsim-v1.1" else one.scores[k][0]
            assert abs(a - b) <= 1e-12, (i, k, a, b)
            seen.add((k, float(b)))
    # the proposals are diverse enough to exercise the penalties (not all ones)
    assert any(v == 0.0 for k, v in seen if k in ("nc", "ttc", "dac"))


def test_human_filter_in_the_batch_equals_the_standalone_filter() -> None:
    scene = straight_road_scene(speed=10.0, agents=[Agent(x=25.0, y=0.0)])  # the human drives into it
    mi = MapIndex(scene)
    alone = human_filter_mask(scene, mi, V2)
    out = score_proposals_v2(scene, _random_proposals(8), V2, map_index=mi)
    assert alone["nc"] and "nc" in out.filtered
    assert set(out.filtered) == {k for k, hit in alone.items() if hit}


def _region_points(geom: shapely.Geometry, rng: np.random.Generator) -> np.ndarray:
    x0, y0, x1, y1 = shapely.bounds(geom)
    pts = rng.uniform([x0 - 3, y0 - 3], [x1 + 3, y1 + 3], (20000, 2))
    ring = shapely.get_coordinates(shapely.boundary(geom))
    on_edges = 0.5 * (ring[:-1] + ring[1:])
    return np.concatenate([pts, ring, on_edges, np.round(pts[:3000]), np.round(pts[:3000] * 2) / 2])


def test_grid_region_equals_shapely_contains_xy() -> None:
    rng = np.random.default_rng(0)
    square = shapely.box(0, 0, 20, 10)
    holed = shapely.Polygon([(0, 0), (30, 0), (30, 30), (0, 30)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    skew = shapely.Polygon([(0.3, 0.1), (50.7, 3.3), (47.2, 40.9), (12.5, 25.25), (1.1, 33.3)])
    multi = shapely.union_all([shapely.box(0, 0, 5, 5), shapely.box(5, 0, 9, 5), shapely.box(20, 20, 21, 23)])
    for geom in (square, holed, skew, multi):
        shapely.prepare(geom)
        for cell in (1.0, 0.5, 3.0):
            grid = GridRegion(geom, cell)
            pts = _region_points(geom, rng)
            expected = shapely.contains_xy(geom, pts[:, 0], pts[:, 1])
            assert np.array_equal(grid.contains(pts), expected)
            assert 0.05 < expected.mean() < 0.95
    empty = GridRegion(shapely.Polygon())
    assert not empty.contains(np.zeros((3, 4, 2))).any()
    assert empty.contains(np.zeros((3, 4, 2))).shape == (3, 4)


def test_closed_form_lateral_gain_equals_the_recurrences() -> None:
    rng = np.random.default_rng(1)
    p = LQRParams(bicycle=BicycleParams(wheelbase=2.9))
    n = 500
    lat = rng.normal(0, [1.0, 0.3, 0.2], (n, 3))
    v0 = rng.uniform(-1, 25, n)
    accel = rng.uniform(-4, 3, n)
    curv = rng.normal(0, 0.05, (n, p.horizon))
    speeds = v0[:, None] + np.arange(p.horizon) * p.dt * accel[:, None]
    expected = _lateral_command(lat, speeds, curv, p)
    moments = curv @ _horizon_sums(p.horizon)[1]
    got = _lateral_command_closed_form(lat, v0, accel, moments, p)
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_tridiagonal_curvature_fit_equals_the_dense_least_squares() -> None:
    rng = np.random.default_rng(2)
    p = LQRParams()
    dt, m = p.dt, 40
    t = np.arange(m + 1) * dt
    b = 16
    speed = rng.uniform(0, 15, (b, 1)) + rng.normal(0, 1, (b, 1)) * t
    heading = np.cumsum(rng.normal(0, 0.02, (b, m + 1)), axis=1)
    xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], -1) * (speed * dt)[..., None], axis=1)
    poses = np.concatenate([xy, heading[..., None]], -1)
    fit_speed, fit_curv = fit_speed_curvature(poses, p)
    # the original formulation: unknowns [κ0, κ̇_0 …], design diag(v·dt)·E, penalties 1e-10 and 1e-2
    design = np.tril(np.ones((m, m))) * dt
    design[:, 0] = 1.0
    q = np.full(m, p.curvature_rate_penalty)
    q[0] = p.initial_curvature_penalty
    for i in range(b):
        a = (fit_speed[i] * dt)[:, None] * design
        y = np.diff(heading[i])
        sol = np.linalg.solve(a.T @ a + np.diag(q), a.T @ y)
        curv = sol[0] + np.concatenate([[0.0], np.cumsum(sol[1:] * dt)])
        assert np.allclose(fit_curv[i], curv, rtol=1e-8, atol=1e-10)


def test_pdm_closed_accel_lag_starts_from_the_logged_acceleration() -> None:
    from drivedistill.geometry.scene_index import constant_velocity_agents
    from drivedistill.sim.pdm_closed import PDMClosedParams, idm_progress, offset_paths

    scene = straight_road_scene(speed=5.0, speed_limit=15.0)
    scene.ego_dynamics = np.array([5.0, -2.0, 0.0, 0.0])  # braking at t = 0; IDM wants to speed up
    agents = constant_velocity_agents(scene, 50)
    targets = np.array([15.0])
    paths = offset_paths(scene.route, (0.0,), 0.5)
    plain = idm_progress(scene, paths, targets, agents, PDMClosedParams())[0, 0]
    lagged = idm_progress(scene, paths, targets, agents, PDMClosedParams(accel_lag=1.0))[0, 0]
    v_plain, v_lagged = np.diff(plain) / 0.1, np.diff(lagged) / 0.1
    assert v_plain[2] > v_plain[1] > 5.0  # IDM accelerates at once
    assert v_lagged[2] < v_lagged[1] < 5.0  # still braking first, as the ego was
    assert v_lagged[-1] > v_lagged[10]  # then follows IDM's acceleration
