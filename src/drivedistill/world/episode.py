"""`run_episode`: drive the expert through one scenario and cut the log into `Scene`s.

Time: the simulator and the expert run at 10 Hz; sensors are rendered every 0.5 s (keyframes). A sample
is taken at every keyframe that has 2 s of history before it and 4 s of future after it.

**Ego pose** = the centre of the ego box (highway-env's vehicle position), yaw = its heading, in the
right-handed world frame of `world/roadmap.py`; ego-frame quantities are relative to that pose. The ego
box is `EGO_LENGTH` × `EGO_WIDTH` metres. Agent boxes use the same convention (centre, heading); agent
`vx`, `vy` are each agent's own velocity expressed in the current ego frame (not relative to the ego).

Tokens: episode ``f"{scenario}-s{seed}-e{index:05d}"``, sample ``f"{episode}-f{keyframe:03d}"``.
Same (cfg, episode_index) → byte-identical scenes (everything is drawn from one seeded generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from highway_env.vehicle.kinematics import Vehicle

from drivedistill.types import (
    AGENT_FIELDS,
    FUTURE_FRAME_STEPS,
    NUM_FUTURE,
    NUM_PAST,
    AgentClass,
    AgentInput,
    MapGeometry,
    Privileged,
    Scene,
)
from drivedistill.world.bev import render_bev
from drivedistill.world.camera import CameraScene, render_camera
from drivedistill.world.config import SIM_HZ, VAL_EPISODE_BASE, WorldConfig
from drivedistill.world.lidar import box_walls, ray_cast, roadside, splat
from drivedistill.world.roadmap import poses_to_ego, to_world, world_to_ego
from drivedistill.world.route import route_centerline, route_command, route_lane, route_lanes
from drivedistill.world.scenarios import EVENTS_OF, JUNCTION, World, build_world, network
from drivedistill.world.surface import fillet_pieces, seam_pieces

EGO_LENGTH = float(Vehicle.LENGTH)  # [m]
EGO_WIDTH = float(Vehicle.WIDTH)  # [m]
KEY = SIM_HZ // 2  # simulation steps per 0.5 s keyframe
AGENT_RADIUS = 60.0  # [m] agents within this distance at any of the 9 steps are recorded
DRIVEN_HEADING = math.radians(30.0)  # [rad] the ego drives along a lane within this of its heading
MAP_RADIUS = 150.0  # [m] covers the 4 s plan at highway speed (≤ 35 m/s · 4 s) for PDMS drivable-area checks
EVENT_PRIORITY = ("stopped_vehicle", "lead_brake", "cut_in", "stop_and_go", "cross_traffic", "slow_vehicle")
CURVE_YAW = 0.35  # [rad] |yaw at 4 s − yaw rate · 4 s| above which a sample is labelled "curve" (a bend
# ahead the current yaw rate does not predict)
SLOW_FACTOR = 0.85  # a car ahead below this fraction of the ego's target speed is "slow"
PALETTE = np.array(
    [[200, 60, 50], [50, 90, 200], [230, 200, 60], [240, 240, 240], [40, 40, 45], [60, 160, 90]], np.uint8
)


@dataclass
class EpisodeResult:
    """Scenes of one episode and what happened to the expert (collided, offroad) with a few stats."""

    scenes: list[Scene]
    scenario: str
    episode: str
    collided: bool
    offroad: bool
    stats: dict[str, Any] = field(default_factory=dict)
    # (N, 3) ray-cast LiDAR returns x, y, z of each scene's keyframe (ego frame, z above the ground; what
    # `AgentInput.bev` splats), aligned with `scenes`; the nuScenes export writes them as LIDAR_TOP sweeps
    lidar_points: list[np.ndarray] = field(default_factory=list)
    index: int = -1  # the episode index run_episode was given


def episode_id(scenario: str, seed: int, index: int) -> str:
    return f"{scenario}-s{seed}-e{index:05d}"


def choose_event(cfg: WorldConfig, scenario: str, rng: np.random.Generator) -> str | None:
    """At most one scripted event for the episode, among those `scenario` supports."""
    names = [e for e in EVENTS_OF[scenario] if cfg.event_probs.get(e, 0.0) > 0]
    probs = np.array([cfg.event_probs[e] for e in names], np.float64)
    u = rng.uniform()
    if probs.sum() > 1:
        probs = probs / probs.sum()
    cum = np.cumsum(probs)
    for name, c in zip(names, cum):
        if u < c:
            return name
    return None


def ego_pose(v: Vehicle) -> np.ndarray:
    """(3,) world x, y, yaw of a vehicle's box centre."""
    xy, yaw = to_world(v.position, v.heading)
    return np.array([xy[0], xy[1], yaw])


class Tracks:
    """Stable integer track ids for vehicles (references are kept so ids are never reused)."""

    def __init__(self) -> None:
        self._ids: dict[int, int] = {}
        self._keep: list[Vehicle] = []

    def __call__(self, v: Vehicle) -> int:
        key = id(v)
        if key not in self._ids:
            self._ids[key] = len(self._ids)
            self._keep.append(v)
        return self._ids[key]


def snapshot(world: World, tracks: Tracks) -> np.ndarray:
    """(N, 9) world-frame states of the other vehicles: track, x, y, yaw, length, width, vx, vy, braking."""
    rows = []
    for v in world.road.vehicles:
        if v is world.ego:
            continue
        xy, yaw = to_world(v.position, v.heading)
        vel = np.array([np.cos(yaw), np.sin(yaw)]) * v.speed
        braking = float(v.action.get("acceleration", 0.0)) < -1.0 if isinstance(v.action, dict) else False
        rows.append((tracks(v), xy[0], xy[1], yaw, v.LENGTH, v.WIDTH, vel[0], vel[1], float(braking)))
    return np.array(rows, np.float64).reshape(-1, 9)


def sensor_rng(seed: int, episode_index: int) -> np.random.Generator:
    """The generator of an episode's sensor noise (separate from the world's, so noise settings never
    change the traffic)."""
    return np.random.default_rng([seed, episode_index, 7])


def observe(
    world: World,
    cfg: WorldConfig,
    snap: np.ndarray,
    rng: np.random.Generator | None = None,
    points: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render the sensors of the current state: front camera (H, W, 3), LiDAR BEV histogram (Hb, Wb, 2)
    (students' `AgentInput.bev`, world/lidar.py) and the labelled BEV raster (Hb, Wb, 3) (privileged,
    world/bev.py). `rng` draws the LiDAR's range noise and dropout (None = noise-free); `points`, when
    given, gets the (N, 3) ray-cast returns the histogram was splatted from appended."""
    roadmap = network(world.scenario)[1]
    pose = ego_pose(world.ego)
    boxes = np.zeros((len(snap), 5))
    if len(snap):
        boxes[:, :2] = world_to_ego(snap[:, 1:3], pose)
        boxes[:, 2] = snap[:, 3] - pose[2]
        boxes[:, 3:5] = snap[:, 4:6]
    colors = PALETTE[snap[:, 0].astype(int) % len(PALETTE)] if len(snap) else np.zeros((0, 3), np.uint8)
    _, _, polys, marks = roadmap.crop(pose, cfg.camera.max_range, min_x=-10.0)
    camera = render_camera(CameraScene(polys, marks, boxes, colors, snap[:, 8] > 0), cfg.camera)
    _, _, polys, marks = roadmap.crop(pose, cfg.bev.radius + 4.0)
    near = np.hypot(boxes[:, 0], boxes[:, 1]) < cfg.bev.radius + 6.0
    labelled = render_bev(polys, marks, boxes[near], cfg.bev)
    reach = cfg.lidar.max_range + 6.0
    walls = roadside(world.scenario).crop(pose, reach)
    seen = np.hypot(boxes[:, 0], boxes[:, 1]) < reach
    returns = ray_cast(walls + box_walls(boxes[seen]), cfg.lidar, rng)
    if points is not None:
        points.append(returns.astype(np.float32))
    return camera, splat(returns, cfg.bev), labelled


def overtaking_slow(world: World) -> bool:
    """The ego is changing lane while a slower car ahead in its current lane holds it back."""
    ego = world.ego
    if ego.lane_index == ego.target_lane_index or ego.target_lane_index[:2] != ego.lane_index[:2]:
        return False
    front, _ = world.road.neighbour_vehicles(ego, ego.lane_index)
    return bool(
        front is not None
        and front.speed < SLOW_FACTOR * float(getattr(ego, "target_speed", ego.speed))
        and ego.lane_distance_to(front) < 60.0
    )


def junction_busy(world: World) -> bool:
    """Ego near/in the junction while another vehicle in it moves in another direction."""
    if world.scenario not in JUNCTION:
        return False
    centre, radius = JUNCTION[world.scenario]
    centre_h = centre * [1, -1]
    if np.linalg.norm(world.ego.position - centre_h) > radius:
        return False
    for v in world.road.vehicles:
        crossing = abs(np.angle(np.exp(1j * (v.heading - world.ego.heading)))) > 0.5
        if v is not world.ego and crossing and np.linalg.norm(v.position - centre_h) < radius:
            return True
    return False


@dataclass
class _Log:
    """10 Hz ego log and 2 Hz keyframe records."""

    pose: list[np.ndarray] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    events: list[set[str]] = field(default_factory=list)
    camera: list[np.ndarray] = field(default_factory=list)
    bev: list[np.ndarray] = field(default_factory=list)
    labelled_bev: list[np.ndarray] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)
    agents: list[np.ndarray] = field(default_factory=list)
    # the ego's lane on its route and its arc length there, at keyframes (`world.route.route_lane`)
    lane: list[tuple[str, str, int]] = field(default_factory=list)
    s_on_lane: list[float] = field(default_factory=list)
    # edges the ego drove along where no lane of its route held it (`_record_driven`)
    driven: set[tuple[str, str]] = field(default_factory=set)


class Push(NamedTuple):
    """An episode's recovery push (`WorldConfig.perturb`): simulation steps [start, end) and the yaw-rate
    offset [rad/s] per m/s of the ego's speed at `start`."""

    start: int
    end: int
    gain: float

    def apply(self, ego: Any, step: int) -> None:
        """Before simulation step `step`: switch the expert's push on at `start`, off at `end`."""
        if step == self.start:
            ego.yaw_rate_offset = self.gain / max(float(ego.speed), 3.0)
        elif step == self.end:
            ego.yaw_rate_offset = 0.0


def push_schedule(cfg: WorldConfig, episode_index: int) -> Push | None:
    """The episode's recovery push (`WorldConfig.perturb`), or None: prob 0, a validation episode, or the
    draw. Its own generator, so a push never changes the traffic, the event or the sensor noise."""
    p = cfg.perturb
    if p.prob <= 0 or episode_index >= VAL_EPISODE_BASE:
        return None
    rng = np.random.default_rng([cfg.seed, episode_index, 11])
    if rng.uniform() >= p.prob:
        return None
    n = max(1, round(p.seconds * SIM_HZ))
    first, last = NUM_PAST * KEY, cfg.num_steps - NUM_FUTURE * KEY - n  # leave samples after the push
    if last < first:
        return None
    start = int(rng.integers(first, last + 1))
    # lateral offset ≈ v·ω·T²/2 → ω = 2·offset / (v·T²), with a random side and size
    gain = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * 2 * p.offset_m / p.seconds**2)
    return Push(start, start + n, gain)


def run_episode(cfg: WorldConfig, episode_index: int) -> EpisodeResult:
    """Simulate episode `episode_index` of `cfg` with the expert and return its samples."""
    if episode_index < 0:
        raise ValueError(f"run_episode: episode_index must be ≥ 0, got {episode_index}")
    scenario = cfg.scenarios[episode_index % len(cfg.scenarios)]
    rng = np.random.default_rng([cfg.seed, episode_index])
    event = choose_event(cfg, scenario, rng)
    world = build_world(scenario, rng, cfg.density_of(scenario), event)
    tracks, log, noise = Tracks(), _Log(), sensor_rng(cfg.seed, episode_index)
    collided, offroad_steps, n_vehicles = False, 0, 0
    push = push_schedule(cfg, episode_index)
    for step in range(cfg.num_steps + 1):
        log.pose.append(ego_pose(world.ego))
        log.speed.append(float(world.ego.speed))
        if step % KEY == 0:
            snap = snapshot(world, tracks)
            cam, bev, labelled = observe(world, cfg, snap, noise, log.points)
            log.camera.append(cam)
            log.bev.append(bev)
            log.labelled_bev.append(labelled)
            log.agents.append(snap)
            lane, s_on_lane = route_lane(world.road.network, world.route_edges, world.ego)
            log.lane.append(lane)
            log.s_on_lane.append(s_on_lane)
            n_vehicles += len(snap)
        if step == cfg.num_steps or collided:
            break
        if push is not None:
            push.apply(world.ego, step)
        world.step()
        natural = {"cross_traffic"} if junction_busy(world) else set()
        if overtaking_slow(world):
            natural.add("slow_vehicle")
        log.events.append(set(world.active) | natural)
        offroad_steps += int(not world.ego.on_road)
        collided = bool(world.ego.crashed)
        _record_driven(world, log)
    eid = episode_id(scenario, cfg.seed, episode_index)
    keyframes = list(range(NUM_PAST, len(log.camera) - NUM_FUTURE))
    if push is not None:  # drop the samples whose 4 s future overlaps the push (their label is the push)
        keyframes = [k for k in keyframes if k * KEY >= push.end or (k + NUM_FUTURE) * KEY <= push.start]
    scenes = [_scene(cfg, world, log, eid, k) for k in keyframes]
    if push is not None:
        for scene in scenes:
            if scene.frame_index * KEY >= push.end:
                scene.meta["recovery_s"] = (scene.frame_index * KEY - push.end) / SIM_HZ
    stats = {
        "event": event or "none",
        "num_keyframes": len(log.camera),
        "mean_vehicles": n_vehicles / max(1, len(log.camera)),
        "offroad_steps": offroad_steps,
        "distance_m": float(np.hypot(*np.diff(np.array(log.pose)[:, :2], axis=0).T).sum()),
    }
    if push is not None:
        stats["push_s"] = [push.start / SIM_HZ, push.end / SIM_HZ]
    points = [log.points[s.frame_index] for s in scenes]
    return EpisodeResult(scenes, scenario, eid, collided, offroad_steps > 0, stats, points, episode_index)


def _ego_status(log: _Log, j: int) -> np.ndarray:
    """speed [m/s], longitudinal acceleration [m/s²], yaw rate [rad/s] at 10 Hz step j (backward diff)."""
    j0 = max(j - 1, 0)
    dt = max(j - j0, 1) / SIM_HZ
    dyaw = float(np.angle(np.exp(1j * (log.pose[j][2] - log.pose[j0][2]))))
    return np.array([log.speed[j], (log.speed[j] - log.speed[j0]) / dt, dyaw / dt], np.float32)


def _agents(log: _Log, k: int, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(9, A, 8) agent states at keyframes k..k+8 in the ego frame of `pose` (see AGENT_FIELDS) and their
    (9, A) validity; agents = every track within AGENT_RADIUS of the ego at one of those keyframes."""
    steps = range(k, k + NUM_FUTURE + 1)
    near: set[int] = set()
    for i in steps:
        snap = log.agents[i]
        if len(snap):
            d = np.hypot(snap[:, 1] - log.pose[i * KEY][0], snap[:, 2] - log.pose[i * KEY][1])
            near.update(int(t) for t in snap[d < AGENT_RADIUS, 0])
    order = np.array(sorted(near), np.int64)
    out = np.zeros((len(steps), len(order), len(AGENT_FIELDS)), np.float32)
    valid = np.zeros((len(steps), len(order)), bool)
    c, s = np.cos(pose[2]), np.sin(pose[2])
    for n, i in enumerate(steps):
        snap = log.agents[i]
        if not len(snap) or not len(order):
            continue
        col = np.searchsorted(order, snap[:, 0].astype(np.int64))
        hit = (col < len(order)) & (order[np.minimum(col, len(order) - 1)] == snap[:, 0])
        rows, col = snap[hit], col[hit]
        xy = world_to_ego(rows[:, 1:3], pose)
        yaw = np.angle(np.exp(1j * (rows[:, 3] - pose[2])))
        vx, vy = c * rows[:, 6] + s * rows[:, 7], -s * rows[:, 6] + c * rows[:, 7]
        cls = np.full(len(rows), float(AgentClass.VEHICLE))
        out[n, col] = np.stack([xy[:, 0], xy[:, 1], yaw, rows[:, 4], rows[:, 5], vx, vy, cls], 1)
        valid[n, col] = True
    return out, valid


def _onset_s(log: _Log, j: int, event: str | None) -> float | None:
    """Seconds from the sample's t0 (10 Hz step j) until `event` is first active: 0.0 if it is active at
    t0 (what the sensors can show), > 0 if it starts later in the 4 s window (nothing at t0 reveals it);
    None for no event. `log.events[i]` holds the events active after step i, i.e. at time (i + 1) / 10."""
    if event is None:
        return None
    if j > 0 and event in log.events[j - 1]:
        return 0.0
    first = next(i for i in range(j, j + NUM_FUTURE * KEY) if event in log.events[i])
    return (first + 1 - j) / SIM_HZ


def _record_driven(world: World, log: _Log) -> None:
    """Add the ego's lane edge to `log.driven` when the ego drives along it (its closest lane, heading
    within DRIVEN_HEADING of the lane's) while no lane of its route holds it — a roundabout entry ends
    beside the ring edge before the route's. Not an edge it is merely nearest to while on its route (at
    an intersection's stop line the straight-on edge starts beside the left turn's)."""
    ego = world.ego
    edge = (str(ego.lane_index[0]), str(ego.lane_index[1]))
    if edge in log.driven or edge in world.route_edges:
        return
    lane = ego.lane
    s_lane = float(lane.local_coordinates(ego.position)[0])
    if math.cos(lane.heading_at(s_lane) - ego.heading) <= math.cos(DRIVEN_HEADING):
        return
    net = world.road.network
    for a, b in world.route_edges:
        for i in range(len(net.graph[a][b])):
            route_lane = net.get_lane((a, b, i))
            s_route, r_route = route_lane.local_coordinates(ego.position)
            # inside its strip, as the metric scene's lane polygon (highway-env's `on_lane` adds half a car)
            if 0.0 <= s_route <= route_lane.length and abs(r_route) <= route_lane.width_at(s_route) / 2:
                return
    log.driven.add(edge)


def _scene(cfg: WorldConfig, world: World, log: _Log, eid: str, k: int) -> Scene:
    j = k * KEY
    pose = log.pose[j]
    roadmap = network(world.scenario)[1]
    past = poses_to_ego(np.array([log.pose[(k - n) * KEY] for n in range(NUM_PAST, 0, -1)]), pose)
    fut = poses_to_ego(np.array([log.pose[(k + n) * KEY] for n in range(1, NUM_FUTURE + 1)]), pose)
    agents, agents_valid = _agents(log, k, pose)
    lanes_i, centers, polys, _ = roadmap.crop(pose, MAP_RADIUS)
    # on route: the route's edges and the edges the ego drove along where no route lane held it
    # (`_record_driven`) — NAVSIM's route holds the roadblocks the logged ego passes, while a roundabout
    # entry here ends beside the ring edge before the route's (the ego's centre on it was "oncoming" for DDC)
    # — and the edges the route centreline crosses where its lanes do not meet (`world.route.route_lanes`)
    route_lanes_k, crossed = route_lanes(
        roadmap, world.route_edges, log.lane[k], world.scenario == "racetrack"
    )
    route_set = set(world.route_edges) | log.driven | crossed
    junctions = []
    if world.scenario in JUNCTION:
        centre, radius = JUNCTION[world.scenario]
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        circle = centre + radius * 0.6 * np.stack([np.cos(ang), np.sin(ang)], 1)
        junctions.append(world_to_ego(circle, pose).astype(np.float32))
    route = route_centerline(roadmap, route_lanes_k, pose)
    command = route_command(world.scenario, roadmap, world.route_edges, log.lane[k], log.s_on_lane[k])
    window = set().union(*log.events[j : j + NUM_FUTURE * KEY])
    event = next((e for e in EVENT_PRIORITY if e in window), None)
    onset = _onset_s(log, j, event)
    if event is None:
        yaw_rate = float(_ego_status(log, j)[2])
        ahead = np.abs(fut[:, 2] - yaw_rate * 0.5 * np.arange(1, NUM_FUTURE + 1)).max()
        event = "curve" if ahead > CURVE_YAW else "lane_follow"
    geometry = MapGeometry(
        lanes=[c.astype(np.float32) for c in centers],
        lane_polygons=[p.astype(np.float32) for p in polys],
        lane_on_route=np.array([roadmap.keys[i][:2] in route_set for i in lanes_i], bool),
        # the road surface: lane strips, the kerb fillets at junctions and the seams between strips
        # (world/surface.py)
        drivable_polygons=[p.astype(np.float32) for p in polys]
        + fillet_pieces(world.scenario, pose, MAP_RADIUS)
        + seam_pieces(world.scenario, pose, MAP_RADIUS),
        intersection_polygons=junctions,
        route=route,
    )
    priv = Privileged(
        future_trajectory=fut.astype(np.float32),
        future_valid=np.ones(NUM_FUTURE, bool),
        future_frames=np.stack([log.camera[k + n] for n in FUTURE_FRAME_STEPS]),
        future_ego_status=np.stack([_ego_status(log, (k + n) * KEY) for n in range(1, NUM_FUTURE + 1)]),
        agents=agents,
        agents_valid=agents_valid,
        map=geometry,
        scenario=world.scenario,
        labelled_bev=log.labelled_bev[k],
        event=event,
    )
    inputs = AgentInput(
        camera=log.camera[k],
        bev=log.bev[k],
        ego_history=past.astype(np.float32),
        ego_status=_ego_status(log, j),
        command=int(command),
    )
    meta = {
        "scenario": world.scenario,
        "event": event,
        "event_onset_s": onset,
        "time_s": k * 0.5,
        "seed": cfg.seed,
    }
    return Scene(f"{eid}-f{k:03d}", eid, k, inputs, priv, meta)
