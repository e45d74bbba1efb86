"""The ego route: its centreline around the ego and the driving command it implies.

The command is derived from the **route** (nuScenes/NAVSIM style, not from the future trajectory): when
the ego is within `COMMAND_DISTANCE` of a junction on its route (an intersection or the roundabout ring)
or inside it, the command is the turn the route makes there — the yaw change between the lane entering
the junction and the lane leaving it, LEFT above +30°, RIGHT below −30°, else STRAIGHT. Everywhere else
(highways, merges, lane changes, racetrack curves) the command is STRAIGHT: a lane change forced by a
stopped car or a curve ahead must be read from the camera, not from the command.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from shapely.geometry import LineString, Polygon

from drivedistill.types import Command
from drivedistill.world.roadmap import LaneKey, RoadMap, world_to_ego
from drivedistill.world.scenarios import is_junction_edge

COMMAND_DISTANCE = 30.0  # [m] before a junction where its turn becomes the command
TURN_THRESHOLD = math.radians(30.0)
ROUTE_BEHIND, ROUTE_AHEAD = 15.0, 90.0  # [m] extent of the route centreline
JOIN = 0.5  # [m] lane ends this close meet


def _edge_sequence(
    route_edges: list[tuple[str, str]], edge: tuple[str, str], cyclic: bool
) -> list[tuple[str, str]]:
    """Route edges from the one before `edge` onwards (the route twice over if it is a loop)."""
    seq = route_edges * 2 if cyclic else list(route_edges)
    if edge not in seq:
        return [edge]
    i = seq.index(edge)
    return seq[max(0, i - 1) :]


def _lane_key(roadmap: RoadMap, edge: tuple[str, str], lane_id: int) -> LaneKey:
    ids = [k[2] for k in roadmap.keys if k[:2] == edge]
    return (edge[0], edge[1], min(lane_id, max(ids)))


def _points(roadmap: RoadMap, key: LaneKey) -> np.ndarray:
    return roadmap.center[roadmap.lane_slice(key)]


def _nearest(roadmap: RoadMap, edge: tuple[str, str], point: np.ndarray, tip: int) -> LaneKey:
    """The lane of `edge` whose start (tip 0) or end (tip -1) is nearest `point`."""
    keys = [k for k in roadmap.keys if k[:2] == edge]
    return min(keys, key=lambda k: float(np.hypot(*(_points(roadmap, k)[tip] - point))))


def _crossed_edges(roadmap: RoadMap, a: np.ndarray, b: np.ndarray) -> set[tuple[str, str]]:
    """Edges whose lane strips the straight join from `a` to `b` runs over for more than JOIN metres."""
    chord = LineString([a, b])
    out = set()
    for key in roadmap.keys:
        if Polygon(roadmap.strip(key)).intersection(chord).length > JOIN:
            out.add(key[:2])
    return out


def route_lanes(
    roadmap: RoadMap, route_edges: list[tuple[str, str]], lane_index: LaneKey, cyclic: bool
) -> tuple[list[LaneKey], set[tuple[str, str]]]:
    """The route's lanes from the edge before the ego's onwards (≤ 8 edges), and the other edges the route
    centreline runs over where consecutive lanes do not meet.

    Each lane is joined to its neighbour — the next edge's lane whose start is nearest the previous lane's
    end, the edge before's lane whose end is nearest the current lane's start — the lane graph highway-env's
    networks lack: lane numbers do not carry over (the roundabout's entry, lane 0, joins the ring's outer
    lane 1, not the inner one 7.7 m away). Where lanes still do not meet, the centreline joins them
    straight: a roundabout entry ends 2 m outside the ring lane *before* its route's (5.6 m from the next
    lane's start), an exit starts beside the ring lane *after* it; the ring edges that join crosses carry
    the ego the same way and are on route for the metric scene (DDC read them as oncoming)."""
    seq = _edge_sequence(route_edges, lane_index[:2], cyclic)[:8]
    j = seq.index(lane_index[:2])
    lanes = [_lane_key(roadmap, lane_index[:2], lane_index[2])]
    for edge in seq[j + 1 :]:
        lanes.append(_nearest(roadmap, edge, _points(roadmap, lanes[-1])[-1], 0))
    if j == 1:
        lanes.insert(0, _nearest(roadmap, seq[0], _points(roadmap, lanes[0])[0], -1))
    crossed: set[tuple[str, str]] = set()
    for a, b in itertools.pairwise(lanes):
        end, start = _points(roadmap, a)[-1], _points(roadmap, b)[0]
        if np.hypot(*(end - start)) > JOIN:
            crossed |= _crossed_edges(roadmap, end, start) - {a[:2], b[:2]}
    return lanes, crossed


def route_centerline(roadmap: RoadMap, lanes: list[LaneKey], pose: np.ndarray) -> np.ndarray:
    """(R, 2) centreline through the route's lanes (`route_lanes`) from 15 m behind the ego to 90 m ahead,
    in the frame of `pose` (world x, y, yaw) [m]."""
    local = world_to_ego(np.concatenate([_points(roadmap, k) for k in lanes]), pose)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(local, axis=0).T))])
    s_ego = arc[int(np.argmin(np.hypot(local[:, 0], local[:, 1])))]
    keep = (arc >= s_ego - ROUTE_BEHIND) & (arc <= s_ego + ROUTE_AHEAD)
    return local[keep].astype(np.float32)


def route_lane(network: Any, route_edges: list[tuple[str, str]], vehicle: Any) -> tuple[LaneKey, float]:
    """The lane of the route a vehicle is on and its arc length [m] along it (clamped to the lane): its own
    lane where that lies on the route, else the route lane nearest it (highway-env's lane distance: the
    lateral offset plus any distance beyond the lane's ends). highway-env's closest lane leaves the route
    where lanes overlap: at an intersection's stop line it is the straight-on edge beside the route's turn,
    past a roundabout entry the ring edge before the route's — and a route (its centreline, its command)
    built from there ran straight on where the route turns (version 10)."""
    lane_index = tuple(vehicle.lane_index)
    if lane_index[:2] not in route_edges:
        keys = [(a, b, i) for a, b in route_edges for i in range(len(network.graph[a][b]))]
        lane_index = min(
            keys, key=lambda k: float(network.get_lane(k).distance(vehicle.position)), default=lane_index
        )
    lane = network.get_lane(lane_index)
    s = float(lane.local_coordinates(vehicle.position)[0])
    return (str(lane_index[0]), str(lane_index[1]), int(lane_index[2])), min(max(s, 0.0), float(lane.length))


def route_command(
    scenario: str, roadmap: RoadMap, route_edges: list[tuple[str, str]], lane_index: LaneKey, s_on_lane: float
) -> Command:
    """Command at the ego's position (`s_on_lane` [m] along its current lane `lane_index`)."""
    junction = [i for i, e in enumerate(route_edges) if is_junction_edge(scenario, e)]
    edge = lane_index[:2]
    if not junction or edge not in route_edges:
        return Command.STRAIGHT
    first, last = junction[0], junction[-1]
    i = route_edges.index(edge)
    if i > last or first == 0 or last + 1 >= len(route_edges):
        return Command.STRAIGHT
    dist = 0.0
    if i < first:
        for k in range(i, first):
            sl = roadmap.lane_slice(_lane_key(roadmap, route_edges[k], 0))
            seg = roadmap.center[sl]
            length = float(np.hypot(*np.diff(seg, axis=0).T).sum())
            dist += length - (s_on_lane if k == i else 0.0)
    if dist > COMMAND_DISTANCE:
        return Command.STRAIGHT
    before = roadmap.center[roadmap.lane_slice(_lane_key(roadmap, route_edges[first - 1], 0))]
    after = roadmap.center[roadmap.lane_slice(_lane_key(roadmap, route_edges[last + 1], 0))]
    yaw_in = math.atan2(*(before[-1] - before[-2])[::-1])
    yaw_out = math.atan2(*(after[1] - after[0])[::-1])
    delta = (yaw_out - yaw_in + math.pi) % (2 * math.pi) - math.pi
    if delta > TURN_THRESHOLD:
        return Command.LEFT
    if delta < -TURN_THRESHOLD:
        return Command.RIGHT
    return Command.STRAIGHT
