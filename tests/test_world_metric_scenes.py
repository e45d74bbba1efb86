"""The default world's metric scenes where the expert was scored against its own road (#16 pt 3, #19 pt 3):
kerb fillets that meet the lane strips, on-route lanes that hold the path the ego drove, and the map's
speed limit (docs/LOG.md, "The expert's ceiling: a 5 cm gap, the roundabout's on-route lanes")."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest

from drivedistill.world import surface
from drivedistill.world.scenarios import speed_limit


def _validation_episode(index: int) -> Any:
    """A default-world validation episode with tiny sensors (the expert's driving does not depend on them)."""
    from drivedistill.world.bev import BevConfig
    from drivedistill.world.camera import CameraConfig
    from drivedistill.world.config import WorldConfig
    from drivedistill.world.episode import run_episode

    cfg = WorldConfig(
        num_episodes=50,
        val_episodes=25,
        camera=CameraConfig(height=16, width=32),
        bev=BevConfig(height=16, width=16, resolution=4.0),
    )
    return run_episode(cfg, index)


@pytest.mark.parametrize("scenario", ["roundabout", "intersection"])
def test_junction_fillets_meet_the_lane_strips(scenario: str) -> None:
    """The drivable area a metric scene carries (lane strips ∪ fillets ∪ seams) has no sliver gaps: a
    10 cm closing adds (almost) nothing. Fillets cut from the 5 cm-buffered lane union left a 5 cm gap
    along every lane edge they touch (12.5 m² / 5.0 m² of slivers; a box corner in one was off-road)."""
    import shapely

    pieces = [shapely.Polygon(p) for p in surface.fillets(scenario) + surface.seams(scenario)]
    assert pieces, "a junction scenario has fillets"
    road = shapely.union_all([surface._lane_union(scenario, 0.0), *pieces])
    slivers = shapely.difference(road.buffer(0.1, quad_segs=2).buffer(-0.1, quad_segs=2), road)
    assert slivers.area < 0.5, slivers.area


def test_scenario_speed_limits_are_the_lanes() -> None:
    assert {s: speed_limit(s) for s in ("highway", "merge", "roundabout", "intersection", "racetrack")} == {
        "highway": 30.0,
        "merge": 30.0,
        "roundabout": 20.0,
        "intersection": 10.0,
        "racetrack": 10.0,
    }


def test_roundabout_expert_drives_on_route_and_on_the_road() -> None:
    """Validation episode 1000022 (roundabout): its entry lane ends beside the ring edge before the route's,
    so the expert's centre crossed a lane that was not on the route — DDC ½ ("oncoming") — and a box corner
    sat in the fillet gap (DAC 0 on f017, f018). Every expert plan now scores DDC 1 and f017/f018 DAC 1."""
    from drivedistill.geometry.metric_scene import centre_plan_to_rear_axle
    from drivedistill.metrics.pdms import PDMSConfig, score_plans
    from drivedistill.metrics.plans import metric_scene_of
    from drivedistill.world.ego import REAR_AXLE_BEHIND_CENTRE as D

    episode = _validation_episode(1_000_022)
    assert episode.scenes[0].meta["scenario"] == "roundabout"
    metric = [metric_scene_of(s) for s in episode.scenes]
    assert all(m.speed_limit == 20.0 for m in metric)
    plans = np.stack([centre_plan_to_rear_axle(s.privileged.future_trajectory, D) for s in episode.scenes])  # type: ignore[union-attr]
    report = score_plans(metric, plans, PDMSConfig(protocol="navsim-v2"))
    scores = {r.token.rsplit("-", 1)[1]: r.scores for r in report.scenes}
    assert all(s["ddc"] == 1.0 for s in scores.values()), {k: s["ddc"] for k, s in scores.items()}
    assert scores["f017"]["dac"] == 1.0 and scores["f018"]["dac"] == 1.0
    # a stored sample of another source is refused by name, not scored with the world's conventions
    other = dataclasses.replace(episode.scenes[0], meta={"source": "av2", "log": "x"})
    with pytest.raises(ValueError, match="source 'av2'"):
        metric_scene_of(other)


def test_the_roundabout_island_is_not_road() -> None:
    """The fillets close notches, they do not fill the island: a 5 cm band round it once became one
    ring-shaped "fillet" whose exterior enclosed the whole island (1,028 m² of road)."""
    import shapely

    assert not surface.surface("roundabout").contains(shapely.Point(0.0, 0.0))
    assert max(shapely.Polygon(p).area for p in surface.fillets("roundabout")) < 100.0


def _ego_on(world: object, lane_index: tuple[str, str, int], s: float) -> None:
    ego = world.ego  # type: ignore[attr-defined]
    lane = world.road.network.get_lane(lane_index)  # type: ignore[attr-defined]
    ego.position = lane.position(s, 0.0)
    ego.heading = lane.heading_at(s)
    ego.lane_index, ego.lane = lane_index, lane


def test_an_edge_is_on_route_where_no_route_lane_held_the_ego() -> None:
    """The ring edge a roundabout entry ends beside is added to the route; the straight-on edge that starts
    beside a left turn's at an intersection's stop line is not (the ego is inside its route's lanes)."""
    from drivedistill.world.episode import _Log, _record_driven
    from drivedistill.world.scenarios import build_world

    world = build_world("roundabout", np.random.default_rng(0), 0.0, None)
    assert ("sx", "se") not in world.route_edges and ("se", "ex") in world.route_edges
    ring = world.road.network.get_lane(("sx", "se", 1))
    _ego_on(world, ("sx", "se", 1), ring.length - 3.0)
    log = _Log()
    _record_driven(world, log)
    assert log.driven == {("sx", "se")}

    world = build_world("intersection", np.random.default_rng(0), 0.0, None)
    world.route_edges = [("o0", "ir0"), ("ir0", "il3"), ("il3", "o3")]  # a left turn
    _ego_on(world, ("ir0", "il2", 0), 0.3)  # nearest to the straight-on edge, at the stop line
    log = _Log()
    _record_driven(world, log)
    assert log.driven == set()


@pytest.mark.parametrize("destination", ["exr", "nxr", "wxr"])
def test_roundabout_route_runs_through_on_route_lanes(destination: str) -> None:
    """The route centreline joins connected lanes (the entry continues on the ring's outer lane, not the
    inner one 7.7 m away) and no point of it lies in a lane off the route — the ring edge an entry merges
    into and the one an exit leaves from are on route (`route_lanes` reports them crossed). Before version
    9 it jumped across ring lanes that were off route, so PDM-Closed following it scored DDC ½."""
    import shapely

    from drivedistill.geometry.planar import resample_polyline
    from drivedistill.world.route import route_centerline, route_lanes
    from drivedistill.world.scenarios import RING, network

    net, roadmap, _ = network("roundabout")
    path = net.shortest_path("ser", destination)
    route = list(itertools.pairwise(path))
    pose = np.zeros(3)
    for edge in route:
        for lane_id in range(len(net.graph[edge[0]][edge[1]])):
            lanes, crossed = route_lanes(roadmap, route, (*edge, lane_id), cyclic=False)
            if edge == ("ses", "se"):
                assert lanes[lanes.index(("ses", "se", 0)) + 1] == ("se", "ex", 1)
            # what a join crosses is a ring edge (the ring runs one way), never an entry or exit
            assert all(e[0] in RING and e[1] in RING for e in crossed), crossed
            on_route = set(route) | crossed
            off_route = shapely.union_all(
                [shapely.Polygon(roadmap.strip(key)) for key in roadmap.keys if key[:2] not in on_route]
            ).buffer(-0.01)
            line = resample_polyline(route_centerline(roadmap, lanes, pose).astype(np.float64), 0.25)
            oncoming = [p for p in line if off_route.contains(shapely.Point(p))]
            assert not oncoming, (edge, lane_id, oncoming[:3])


def test_route_and_command_follow_the_route_where_the_ego_lane_leaves_it() -> None:
    """Validation episode 1000023 turns left at the intersection. Waiting at the stop line, the ego's
    highway-env lane was the straight-on edge beside the turn (f015): the route was built from that edge
    alone (22 m straight on) and the command said STRAIGHT. The route now starts from the ego's lane on its
    route (`world.route.route_lane`): every sample's command is LEFT and its route ends far to the left."""
    from drivedistill.types import Command

    episode = _validation_episode(1_000_023)
    assert episode.scenes[0].meta["scenario"] == "intersection"
    for scene in episode.scenes:
        assert scene.privileged is not None
        assert scene.agent_input.command == Command.LEFT, scene.token
        assert scene.privileged.map.route[-1, 1] > 40.0, (scene.token, scene.privileged.map.route[-1])
