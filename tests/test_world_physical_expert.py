"""Causes of the expert's DAC losses on curved roads, fixed in the world (docs/world.md, "The expert as a
ceiling"): the slivers between adjacent lane strips, and highway-env's unphysical steering in bends."""

from __future__ import annotations

import math

import numpy as np
import shapely

from drivedistill.world.bev import BevConfig
from drivedistill.world.camera import CameraConfig
from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import run_episode
from drivedistill.world.expert import ExpertVehicle
from drivedistill.world.scenarios import build_world, network
from drivedistill.world.surface import SEAM_CLOSING, seams


def _strips(scenario: str) -> list[shapely.Polygon]:
    roadmap = network(scenario)[1]
    return [shapely.Polygon(roadmap.strip(key)).buffer(0) for key in roadmap.keys]


def test_seams_fill_gaps_between_lanes_and_move_no_road_edge() -> None:
    assert seams("highway") == []  # straight lanes share their edge samples exactly
    strips = _strips("roundabout")
    lanes = shapely.union_all(strips)
    found = seams("roundabout")
    assert found, "the ring lanes of different length leave slivers between them"
    for poly in found:
        seam = shapely.Polygon(poly)
        point = seam.representative_point()
        assert not lanes.contains(point)  # a real gap of the lane strips ...
        touching = sum(s.distance(seam) < 1e-6 for s in strips)
        assert touching >= 2  # ... between two strips, not outside an outer road edge
        assert seam.minimum_rotated_rectangle.length > 0 and seam.area < 2 * SEAM_CLOSING * seam.length


def test_expert_steering_stays_within_tyre_grip() -> None:
    world = build_world("racetrack", np.random.default_rng(0), 1.0, None)
    ego = world.ego
    assert isinstance(ego, ExpertVehicle)
    for speed in (3.0, 6.0, 9.5, 20.0):
        ego.speed = speed
        for command in (-1.0, -0.3, 0.0, 0.3, 1.0):
            steer = ego._physical_steering(command)
            beta = math.atan(0.5 * math.tan(steer))
            yaw_rate = speed * math.sin(beta) / (ego.LENGTH / 2)
            assert abs(speed * yaw_rate) <= ego.MAX_LATERAL_ACCEL + 1e-9
            assert abs(steer) <= abs(command) + 1e-12 and steer * command >= 0
    ego.speed = 2.0  # slow: the bound is the steering lock, the command passes unchanged
    assert ego._physical_steering(0.8) == 0.8


def test_expert_drives_the_racetrack_within_grip() -> None:
    # before: 2.5 rad/s of yaw rate at 9.5 m/s (23 m/s², racetrack-s0-e00024) where highway-env saturated
    # its steering in a bend taken at cruise speed
    cfg = WorldConfig(
        scenarios=["racetrack"],
        num_episodes=1,
        camera=CameraConfig(height=16, width=32),
        bev=BevConfig(height=16, width=16, resolution=4.0),
    )
    result = run_episode(cfg, 0)
    assert not result.offroad
    status = np.array([s.agent_input.ego_status for s in result.scenes])
    lateral = np.abs(status[:, 0] * status[:, 2])  # v · yaw rate [m/s²]
    assert lateral.max() <= ExpertVehicle.MAX_LATERAL_ACCEL * 1.2, lateral.max()
