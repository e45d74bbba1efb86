"""Scenario families of the default world: road networks, traffic, the ego and scripted events.

Road networks come from highway-env's own environments (highway, merge, roundabout, intersection,
racetrack); traffic and events are placed here, from one numpy generator, so an episode is a pure
function of its seed. `World.step()` advances everything by 0.1 s (events → spawns → act → step).

Scripted events (what only the sensors reveal; `WorldConfig.event_probs` picks at most one per episode;
their scripts are in world/events.py):
- lead_brake       a car 25–35 m ahead in the ego lane brakes at 5–7 m/s² to 0–5 m/s, holds, drives on
- stop_and_go      a queue ahead whose head alternates stopping and creeping every 2.5–4 s
- cut_in           a slower car in the next lane steers into the ego lane 6–16 m ahead (earlier when the
                   ego closes in fast: it leaves 2 m + 0.6 s of closing speed bumper to bumper)
- stopped_vehicle  a stopped car 90–160 m ahead in the ego lane (the expert changes lane or stops)
- cross_traffic    a crossing car timed to reach the junction with the ego (intersection, roundabout)
Natural labels are added per sample in episode.py ("cross_traffic" at busy junctions, "curve", and
"cut_in" for on-ramp merges near the ego).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from highway_env.road.road import Road, RoadNetwork
from highway_env.vehicle.kinematics import Vehicle

from drivedistill.world.config import SIM_HZ
from drivedistill.world.events import CrossTraffic, CutIn, Event, LeadBrake, Merge, StopAndGo, StoppedVehicle
from drivedistill.world.expert import ExpertVehicle, ScriptedVehicle
from drivedistill.world.fastroad import FastRegulatedRoad, FastRoad
from drivedistill.world.fastsim import FastIDMVehicle, speed_up
from drivedistill.world.roadmap import RoadMap

DT = 1.0 / SIM_HZ
EVENTS_OF = {
    "highway": ("lead_brake", "stop_and_go", "cut_in", "stopped_vehicle"),
    "merge": ("lead_brake", "cut_in"),
    "racetrack": ("lead_brake", "stop_and_go", "stopped_vehicle"),
    "roundabout": ("cross_traffic",),
    "intersection": ("cross_traffic",),
}
EGO_TARGET_SPEED = {"highway": 27.0, "merge": 25.0, "racetrack": 10.0, "roundabout": 9.0, "intersection": 9.0}
FAR = 220.0  # [m] other vehicles farther than this from the ego leave the simulation
RING = ("se", "ex", "ee", "nx", "ne", "wx", "we", "sx")
JUNCTION = {
    "roundabout": (np.zeros(2), 38.0),
    "intersection": (np.zeros(2), 22.0),
}  # world centre, radius [m]


@functools.cache
def network(scenario: str) -> tuple[RoadNetwork, RoadMap, bool]:
    """(network, sampled map, regulated) of a scenario; built once per process (roads are static)."""
    from highway_env.envs.intersection_env import IntersectionEnv
    from highway_env.envs.merge_env import MergeGenericEnv
    from highway_env.envs.racetrack_env import RacetrackEnv
    from highway_env.envs.roundabout_env import RoundaboutEnv

    if scenario == "highway":
        net = speed_up(RoadNetwork.straight_road_network(3, length=1500.0, speed_limit=30))
        return net, RoadMap.from_network(net), False
    env_cls: Any = {
        "merge": MergeGenericEnv,
        "racetrack": RacetrackEnv,
        "roundabout": RoundaboutEnv,
        "intersection": IntersectionEnv,
    }[scenario]
    with _vehicle_params_kept():
        env = env_cls(
            config={"before_merge_length": 250, "after_merge_length": 400} if scenario == "merge" else None
        )
    env._make_road()
    net = speed_up(env.road.network)
    return net, RoadMap.from_network(net), scenario == "intersection"


def speed_limit(scenario: str) -> float:
    """[m/s] the speed limit of the scenario's lanes (highway-env's: one per scenario — highway and merge
    30, intersection and racetrack 10, roundabout 20 = its default for lanes built without one)."""
    net, roadmap, _ = network(scenario)
    limits = {float(net.get_lane(key).speed_limit) for key in roadmap.keys}
    if len(limits) != 1:
        raise ValueError(f"scenario {scenario!r}: lanes with different speed limits {sorted(limits)}")
    return limits.pop()


@contextlib.contextmanager
def _vehicle_params_kept() -> Iterator[None]:
    """Undo class-level driver-parameter changes made by highway-env env constructors.

    `IntersectionEnv()` resets itself, and its `_make_vehicles` sets `IDMVehicle.DISTANCE_WANTED`,
    `COMFORT_ACC_MAX` and `COMFORT_ACC_MIN` *on the class*: without this, every episode run after the
    first intersection episode of a process drove with other IDM parameters (results depended on the
    episode order and on how episodes were split over workers)."""
    classes = [c for c in FastIDMVehicle.__mro__ if c is not object]
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    try:
        yield
    finally:
        for cls, attrs in zip(classes, saved):
            for key in [k for k in vars(cls) if k.isupper() and k not in attrs]:
                delattr(cls, key)
            for key, value in attrs.items():
                setattr(cls, key, value)


def is_junction_edge(scenario: str, edge: tuple[str, str]) -> bool:
    """Whether a road edge (from, to) lies inside a junction (where the route's turn is decided)."""
    if scenario == "intersection":
        return edge[0].startswith("ir")
    if scenario == "roundabout":
        return edge[0] in RING and edge[1] in RING
    return False


@dataclass
class World:
    """One running episode: highway-env road + ego + events. `active` = names of events active now."""

    scenario: str
    road: Road
    ego: Vehicle
    rng: np.random.Generator
    density: float
    route_edges: list[tuple[str, str]]
    events: list[Event] = field(default_factory=list)
    time: float = 0.0
    active: set[str] = field(default_factory=set)

    def step(self) -> None:
        self.active = {ev.name for ev in self.events if ev.update(self)}
        self._spawn()
        self.road.act()
        self.road.step(DT)
        self.time += DT
        if round(self.time * SIM_HZ) % SIM_HZ == 0:
            self._clear()

    def _spawn(self) -> None:
        if self.scenario not in ("intersection", "roundabout") or round(self.time * SIM_HZ) % 10 != 5:
            return
        if self.rng.uniform() < 0.45 * self.density:
            entries = ["o1", "o2", "o3"] if self.scenario == "intersection" else ["eer", "ner", "wer"]
            spawn_other(self, str(self.rng.choice(entries)), 3.0)

    def _clear(self) -> None:
        """Drop other vehicles that reached the end of a dead-end lane (they would leave the map)."""
        net = self.road.network
        keep = []
        for v in self.road.vehicles:
            if v is not self.ego:
                if np.abs(v.position - self.ego.position).max() > FAR:
                    continue
                if (
                    not net.graph.get(v.lane_index[1])
                    and v.lane.local_coordinates(v.position)[0] > v.lane.length - 8
                ):
                    continue
            keep.append(v)
        self.road.vehicles = keep


def _ahead(world: World, gap: float, lane_shift: int = 0) -> tuple[np.ndarray, float, tuple[str, str, int]]:
    """Pose (highway-env frame) `gap` metres ahead of the ego along its lane (shifted by lane_shift)."""
    ego = world.ego
    f, t, i = ego.lane_index
    n = len(world.road.network.graph[f][t])
    idx = (f, t, int(np.clip(i + lane_shift, 0, n - 1)))
    s = world.road.network.get_lane(idx).local_coordinates(ego.position)[0]
    edges = world.route_edges * 2
    after = edges[edges.index((f, t)) + 1 :] if (f, t) in edges else []
    route = [idx] + [(a, b, min(idx[2], len(world.road.network.graph[a][b]) - 1)) for a, b in after]
    pos, head = world.road.network.position_heading_along_route(route, s + gap, 0.0, idx)
    return np.asarray(pos, float), float(head), world.road.network.get_closest_lane_index(pos, head)


def place(
    world: World,
    cls: type[FastIDMVehicle],
    pos: np.ndarray,
    head: float,
    speed: float,
    clearance: float = 12.0,
) -> FastIDMVehicle:
    """Put a vehicle at a pose, removing other non-ego traffic within `clearance` metres."""
    world.road.vehicles = [
        v for v in world.road.vehicles if v is world.ego or np.linalg.norm(v.position - pos) > clearance
    ]
    v = cls(world.road, pos, head, speed)
    v.route = None
    world.road.vehicles.append(v)
    return v


def spawn_other(world: World, entry: str, s: float, speed: float | None = None) -> FastIDMVehicle | None:
    """An IDM vehicle on the first lane leaving node `entry`, heading to a random exit; None if not free."""
    net = world.road.network
    nxt = next(iter(net.graph[entry]))
    lane_index = (entry, nxt, 0)
    v = FastIDMVehicle.make_on_lane(
        world.road, lane_index, longitudinal=s, speed=speed or 8.0 + world.rng.normal()
    )
    if any(np.linalg.norm(o.position - v.position) < 15 for o in world.road.vehicles):
        return None
    exits = ["o1", "o2", "o3", "o0"] if world.scenario == "intersection" else ["exr", "nxr", "wxr", "sxr"]
    dests = [
        e for e in exits if e[:2] != entry[:2] and not (world.scenario == "intersection" and e[1] == entry[1])
    ]
    v.plan_route_to(str(world.rng.choice(dests)))
    world.road.vehicles.append(v)
    return v


def build_world(scenario: str, rng: np.random.Generator, density: float, event: str | None) -> World:
    """Road, ego (an `ExpertVehicle`), traffic and the scripted `event` (or None) of one episode."""
    net, _, regulated = network(scenario)
    road_cls = FastRegulatedRoad if regulated else FastRoad
    # highway-env draws from `road.np_random` with the Generator API (`integers`, `choice`, `normal`);
    # a legacy RandomState lacks `integers` and crashes the code paths that use it.
    road = road_cls(
        network=net, np_random=np.random.default_rng(int(rng.integers(2**31))), record_history=False
    )
    ego_speed = {"highway": rng.uniform(22, 26), "merge": rng.uniform(20, 24), "racetrack": 8.0}.get(
        scenario, 8.0
    )
    route: list[tuple[str, str]]
    if scenario == "highway":
        lane = ("0", "1", int(rng.integers(3)))
        s_ego, route = 100.0, [("0", "1")]
    elif scenario == "merge":
        lane = ("a", "b", int(rng.integers(2)))
        s_ego, route = float(rng.uniform(80, 150)), [("a", "b"), ("b", "c"), ("c", "d")]
    elif scenario == "racetrack":
        lane = ("a", "b", int(rng.integers(2)))
        s_ego = float(rng.uniform(5, 30))
        route = [(f, t) for f, tos in net.graph.items() for t in tos]
    elif scenario == "roundabout":
        lane, s_ego = ("ser", "ses", 0), float(rng.uniform(55, 85))
        route = []
    else:
        lane, s_ego = ("o0", "ir0", 0), float(rng.uniform(45, 60))
        route = []
    ego = ExpertVehicle.make_on_lane(road, lane, longitudinal=s_ego, speed=ego_speed)
    ego.target_speed = EGO_TARGET_SPEED[scenario]
    if scenario in ("roundabout", "intersection"):
        dest = str(rng.choice(["exr", "nxr", "wxr"] if scenario == "roundabout" else ["o1", "o2", "o3"]))
        ego.plan_route_to(dest)
        route = [(a, b) for a, b, _ in ego.route]
    road.vehicles.append(ego)
    road.focus = ego
    world = World(scenario, road, ego, rng, density, route)
    _populate(world, s_ego)
    if event is not None:
        world.events.append(_make_event(world, event))
    return world


def _populate(world: World, s_ego: float) -> None:
    """Background traffic, scaled by the density multiplier."""
    rng, road, ego, d = world.rng, world.road, world.ego, world.density
    if d <= 0:
        return
    if world.scenario in ("highway", "merge"):
        edge = ("0", "1") if world.scenario == "highway" else ("a", "b")
        for i in range(len(road.network.graph[edge[0]][edge[1]])):
            s = s_ego - 50 + rng.uniform(0, 20)
            while s < s_ego + 220:
                if abs(s - s_ego) > (25 if i == ego.lane_index[2] else 10):
                    v = FastIDMVehicle.make_on_lane(
                        road, (*edge, i), longitudinal=s, speed=rng.uniform(19, 25)
                    )
                    v.target_speed = v.speed + rng.uniform(-1, 2)
                    road.vehicles.append(v)
                s += rng.uniform(30, 60) / d
        if world.scenario == "merge":
            t_ego = (330 - s_ego) / ego.speed
            for lag in sorted(rng.uniform(-2.5, 2.0, size=1 + int(rng.integers(2)))):
                v_r = rng.uniform(16, 21)
                s_r = 330 - v_r * (t_ego + lag)
                if 5 < s_r < 245:
                    m = ScriptedVehicle.make_on_lane(road, ("j", "k", 0), longitudinal=s_r, speed=v_r)
                    m.route = [("j", "k", 0), ("k", "b", 0), ("b", "c", 2)]
                    m.target_speed = 24.0
                    road.vehicles.append(m)
                    world.events.append(Merge(m))
    elif world.scenario == "racetrack":
        for _ in range(round(4 * d)):
            keys = [
                (f, t, i)
                for f, tos in road.network.graph.items()
                for t, ls in tos.items()
                for i in range(len(ls))
            ]
            idx = keys[int(rng.integers(len(keys)))]
            lane = road.network.get_lane(idx)
            v = FastIDMVehicle.make_on_lane(
                road, idx, longitudinal=rng.uniform(0, lane.length), speed=rng.uniform(5, 8)
            )
            v.target_speed = rng.uniform(6, 9)
            if all(np.linalg.norm(o.position - v.position) > 20 for o in road.vehicles):
                road.vehicles.append(v)
    elif world.scenario == "intersection":
        for _ in range(round(6 * d)):
            spawn_other(world, str(rng.choice(["o1", "o2", "o3"])), rng.uniform(20, 95))
    else:
        ring = list(zip(RING, RING[1:] + RING[:1]))
        for _ in range(round(3 * d)):
            a, b = ring[int(rng.integers(len(ring)))]
            if (a, b) in (("sx", "se"), ("se", "ex")):
                continue
            v = FastIDMVehicle.make_on_lane(
                road, (a, b, int(rng.integers(2))), longitudinal=rng.uniform(0, 10), speed=8.0
            )
            if all(np.linalg.norm(o.position - v.position) > 15 for o in road.vehicles):
                v.plan_route_to(str(rng.choice(["exr", "nxr", "wxr", "sxr"])))
                road.vehicles.append(v)
        for entry in ("eer", "ner", "wer"):
            if rng.uniform() < 0.8 * d:
                spawn_other(world, entry, rng.uniform(50, 115))


def _make_event(world: World, name: str) -> Event:
    rng = world.rng
    if name == "lead_brake":
        pos, head, _ = _ahead(world, rng.uniform(25, 35))
        v = place(world, ScriptedVehicle, pos, head, world.ego.speed)
        v.target_speed = world.ego.speed
        return LeadBrake(v, rng.uniform(3.0, 6.0), -rng.uniform(5, 7), rng.uniform(0, 5), rng.uniform(1, 3))
    if name == "stop_and_go":
        vs = []
        for k in range(4):
            pos, head, _ = _ahead(world, 35 + 14 * k)
            v = place(world, ScriptedVehicle, pos, head, 6.0, clearance=10)
            v.enable_lane_change = False
            vs.append(v)
        return StopAndGo(vs[-1], rng.uniform(2.5, 4.0))
    if name == "cut_in":
        n = len(world.road.network.graph[world.ego.lane_index[0]][world.ego.lane_index[1]])
        i = world.ego.lane_index[2]
        shift = int(rng.choice([s for s in (-1, 1) if 0 <= i + s < n]))
        pos, head, _ = _ahead(world, rng.uniform(30, 45), shift)
        v = place(world, ScriptedVehicle, pos, head, world.ego.speed - rng.uniform(3, 6))
        v.target_speed = v.speed
        v.enable_lane_change = False
        return CutIn(v, rng.uniform(6, 16))
    if name == "stopped_vehicle":
        pos, head, _ = _ahead(
            world, rng.uniform(90, 160) if world.scenario == "highway" else rng.uniform(40, 70)
        )
        v = place(world, ScriptedVehicle, pos, head, 0.0, clearance=20)
        v.target_speed, v.override_accel, v.enable_lane_change = 0.0, 0.0, False
        return StoppedVehicle(v)
    if name == "cross_traffic":
        return CrossTraffic(_challenger(world), JUNCTION[world.scenario])
    raise ValueError(f"unknown event '{name}'")


def _challenger(world: World) -> FastIDMVehicle | None:
    """A crossing vehicle timed to reach the junction together with the ego."""
    rng, ego = world.rng, world.ego
    lag = rng.uniform(-0.5, 1.0)
    if world.scenario == "intersection":
        t = (100.0 - ego.lane.local_coordinates(ego.position)[0]) / max(ego.speed, 1.0) + lag
        entry = str(rng.choice(["o1", "o3"]))
        speed = 8.0
        v = spawn_other(world, entry, max(0.0, 100.0 - speed * t), speed)
        if v is not None:
            v.plan_route_to("o" + str((int(entry[1]) + 2) % 4))
        return v
    t = (127.5 + 17.0 - ego.lane.local_coordinates(ego.position)[0]) / max(ego.speed, 1.0) + lag
    dist, k = 8.0 * t, len(RING) - 1  # walk back along the ring from node "se"
    lanes = world.road.network.graph
    while dist > lanes[RING[k]][RING[(k + 1) % len(RING)]][0].length and k > 1:
        dist -= lanes[RING[k]][RING[(k + 1) % len(RING)]][0].length
        k -= 1
    edge = (RING[k], RING[(k + 1) % len(RING)], 0)
    s = world.road.network.get_lane(edge).length - dist
    v = FastIDMVehicle.make_on_lane(world.road, edge, longitudinal=max(0.0, s), speed=8.0)
    v.plan_route_to(str(rng.choice(["exr", "nxr", "wxr"])))
    world.road.vehicles = [o for o in world.road.vehicles if np.linalg.norm(o.position - v.position) > 10]
    world.road.vehicles.append(v)
    return v
