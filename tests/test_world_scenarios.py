"""Scenario construction: every family builds and runs for many seeds; highway-env's own random draws
(`road.np_random`, Generator API) work."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from highway_env.vehicle.controller import ControlledVehicle

from drivedistill.world.config import SCENARIOS, WorldConfig
from drivedistill.world.episode import choose_event
from drivedistill.world.scenarios import build_world


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_highway_env_random_draws_work(scenario: str) -> None:
    """Regression: the road's np_random was a RandomState, which has no `integers` (used by highway-env's
    `random_lane_index` and `set_route_at_intersection`), so such paths crashed."""
    world = build_world(scenario, np.random.default_rng([0, 1]), 1.0, None)
    lane = world.road.network.random_lane_index(world.road.np_random)
    assert lane[:2] in {(f, t) for f, tos in world.road.network.graph.items() for t in tos}
    for v in world.road.vehicles:
        if isinstance(v, ControlledVehicle) and v is not world.ego:
            v.set_route_at_intersection("random")  # type: ignore[arg-type]
    for _ in range(3):
        world.step()


def test_worlds_build_and_step_for_many_seeds() -> None:
    cfg = WorldConfig()
    for seed in (0, 7):
        for index in range(30):
            scenario = cfg.scenarios[index % len(cfg.scenarios)]
            rng = np.random.default_rng([seed, index])
            world = build_world(scenario, rng, cfg.density_of(scenario), choose_event(cfg, scenario, rng))
            world.step()
            assert world.ego in world.road.vehicles


def test_building_networks_keeps_highway_env_driver_parameters() -> None:
    """Regression: `IntersectionEnv()` set IDM parameters on the class, so every later episode of the
    process (any scenario) drove differently — results depended on the episode order."""
    from highway_env.vehicle.behavior import IDMVehicle

    from drivedistill.world.scenarios import network

    before = {k: v for k, v in vars(IDMVehicle).items() if k.isupper()}
    network.cache_clear()
    for scenario in SCENARIOS:
        network(scenario)
    assert {k: v for k, v in vars(IDMVehicle).items() if k.isupper()} == before
    assert (IDMVehicle.DISTANCE_WANTED, IDMVehicle.COMFORT_ACC_MAX, IDMVehicle.COMFORT_ACC_MIN) == (
        10.0,
        3.0,
        -5.0,
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fast_lanes_match_highway_env(scenario: str) -> None:
    """fastsim's float lane geometry and grid closest-lane query give highway-env's answers."""
    from highway_env.road.lane import CircularLane, SineLane, StraightLane
    from highway_env.road.road import RoadNetwork

    from drivedistill.world.scenarios import network

    net = network(scenario)[0]
    rng = np.random.default_rng(0)
    for _, lane in net._all:  # type: ignore[attr-defined]
        base: Any = next(c for c in type(lane).__mro__ if c in (SineLane, StraightLane, CircularLane))
        for _ in range(5):
            p = lane.position(rng.uniform(0, lane.length), rng.uniform(-3, 3))
            h = float(rng.uniform(-4, 4))
            assert np.allclose(lane.local_coordinates(p), base.local_coordinates(lane, p), atol=1e-9)
            assert net.get_closest_lane_index(p, h) == RoadNetwork.get_closest_lane_index(net, p, h)


def test_regulated_road_enforces_priorities_with_the_original_decisions() -> None:
    from highway_env.road.regulation import RegulatedRoad

    world = build_world("intersection", np.random.default_rng([0, 3]), 1.0, "cross_traffic")
    for _ in range(30):
        world.step()
    road: Any = world.road
    assert road.steps == 30  # the regulated step ran (priority rules every 0.5 s)
    road._pred = {}
    vs = road.vehicles
    for i in range(len(vs)):
        for j in range(i + 1, len(vs)):
            assert bool(road.is_conflict_possible(vs[i], vs[j])) == bool(
                RegulatedRoad.is_conflict_possible(vs[i], vs[j])
            )
