"""MetricScene files and the vectorised geometry against shapely."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from drivedistill.geometry.metric_scene import MetricScene, load_scenes, save_scenes
from drivedistill.geometry.planar import box_corners, convex_intersects, project_to_polyline
from drivedistill.sim.scenarios import Agent, straight_road_scene
from drivedistill.types import AgentClass, ValidationError


def test_save_load_roundtrip(tmp_path) -> None:
    scene = straight_road_scene(
        agents=[Agent(20, 0), Agent(30, 4, 5.0, AgentClass.BICYCLE)], speed_limit=13.0
    )
    save_scenes([scene], tmp_path)
    (back,) = load_scenes(tmp_path)
    assert back.token == scene.token and back.speed_limit == 13.0
    for name in ("agent_poses", "agent_types", "agent_ids", "lane_ids", "route", "ego_geometry"):
        assert np.array_equal(getattr(back, name), getattr(scene, name))
    assert all(np.array_equal(a, b) for a, b in zip(back.lane_polygons, scene.lane_polygons))


def test_validation_names_the_field() -> None:
    scene = straight_road_scene()
    with pytest.raises(ValidationError, match="drivable_polygons"):
        MetricScene(**{**scene.__dict__, "drivable_polygons": []})
    with pytest.raises(ValidationError, match="agent_times"):
        MetricScene(**{**scene.__dict__, "agent_times": scene.agent_times + 1.0})


def test_sat_matches_shapely_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    a = box_corners(
        rng.uniform(-3, 3, (2000, 2)),
        rng.uniform(-np.pi, np.pi, 2000),
        rng.uniform(0.5, 5, 2000),
        rng.uniform(0.5, 2.5, 2000),
    )
    b = box_corners(
        rng.uniform(-3, 3, (2000, 2)),
        rng.uniform(-np.pi, np.pi, 2000),
        rng.uniform(0.5, 5, 2000),
        rng.uniform(0.5, 2.5, 2000),
    )
    ours = convex_intersects(a, b)
    ref = shapely.intersects(shapely.polygons(a), shapely.polygons(b))
    assert 0.2 < ours.mean() < 0.9
    assert np.array_equal(ours, ref)


def test_projection_matches_shapely() -> None:
    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    pts = np.array([[5.0, 1.0], [11.0, 5.0], [-3.0, 0.0]])
    s, d = project_to_polyline(line, pts)
    ref = shapely.line_locate_point(shapely.LineString(line), shapely.points(pts))
    assert np.allclose(s, ref)
    assert np.allclose(d, [1.0, -1.0, 0.0])


def test_scene_conversion_moves_to_the_rear_axle_and_scores() -> None:
    from drivedistill.geometry.metric_scene import metric_scene_from_scene
    from drivedistill.metrics.pdms import score_plans
    from drivedistill.testing import random_scene

    scene = random_scene(seed=3, num_agents=2)
    ms = metric_scene_from_scene(scene, center_to_rear_axle=1.461)
    assert ms.route[0, 0] == pytest.approx(scene.privileged.map.route[0, 0] + 1.461)
    assert ms.human_future[0, 0] == pytest.approx(float(scene.privileged.future_trajectory[0, 0]), abs=1e-3)
    out = score_plans([ms], [ms.human_future]).to_json()
    assert out["num_scored"] == 1
