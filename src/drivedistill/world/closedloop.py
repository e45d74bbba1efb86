"""`ClosedLoopEnv`: a planner drives the ego in the default world; the simulator judges it.

    env = ClosedLoopEnv(world_cfg)
    obs = env.reset(seed=1000, scenario="highway")      # AgentInput at t = 2 s
    while not env.done:
        obs = env.step(planner(obs))                     # plan (8, 3) in the current ego frame

The first 2 s (the history the planner needs) are driven by the expert. Then the ego becomes a plain
kinematic bicycle whose plan is tracked at 10 Hz by pure pursuit (look-ahead 0.6·v + 3 m, clipped to
4..20 m, shortened where the plan itself bends so that a turn is cut by ≤ 0.25 m, never below 2.5 m;
waypoints behind the car dropped first) and a proportional speed controller on the speed the
plan implies 0.5 s ahead; the planner is called every 0.5 s (2 Hz). `expert=True` keeps the privileged
expert in control instead (the reference row). Collisions, off-road, route progress and the ego's motion
come from the simulator's own state. Scripted events and traffic are those of `run_episode` for the
same (seed, episode index): the expert's data and the closed-loop test share one world.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from highway_env.vehicle.kinematics import Vehicle

from drivedistill.types import NUM_FUTURE, NUM_PAST, AgentInput
from drivedistill.world.config import SIM_HZ, WorldConfig
from drivedistill.world.episode import KEY, Tracks, choose_event, ego_pose, observe, sensor_rng, snapshot
from drivedistill.world.roadmap import poses_to_ego, world_to_ego
from drivedistill.world.route import route_command, route_lane
from drivedistill.world.scenarios import World, build_world, network

MAX_STEER = math.pi / 3  # [rad] highway-env's steering limit
ACCEL_LIMITS = (-8.0, 4.0)  # [m/s^2]
SPEED_GAIN = 1.5  # [1/s]
# Pure pursuit cuts a bend of radius R by about L²/(8R) at look-ahead L: at a 90° junction turn (R ≈ 10 m)
# the speed-based look-ahead (≈ 9 m at 10 m/s) cut 1 m and a lane-centre plan left the road. The look-ahead
# is shortened to sqrt(8·R·CUT_TOLERANCE) where the plan itself bends (R from the plan's own positions,
# nothing else), never below MIN_LOOKAHEAD.
CUT_TOLERANCE = 0.25  # [m]
MIN_LOOKAHEAD = 2.5  # [m]


@dataclass
class EgoTrace:
    """10 Hz log of the ego: world poses (x, y, yaw) and speeds; plus 2 Hz (camera (H, W, 3), labelled BEV
    (Hb, Wb, 3)) frames if recorded (the labelled BEV is for people watching; the planner gets the LiDAR)."""

    poses: list[np.ndarray] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)
    frames: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def plan_curvature(points: np.ndarray) -> float:
    """Largest curvature [1/m] of the polyline (P, 2) [m] over consecutive point triples (Menger
    curvature 4·area / product of sides); 0 for fewer than 3 points or points closer than 0.5 m."""
    p = np.asarray(points, np.float64)
    p = p[np.concatenate([[True], np.hypot(*np.diff(p, axis=0).T) > 0.5])]
    if len(p) < 3:
        return 0.0
    a, b, c = p[:-2], p[1:-1], p[2:]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    sides = np.hypot(*(b - a).T) * np.hypot(*(c - b).T) * np.hypot(*(c - a).T)
    return float((2.0 * np.abs(cross) / np.maximum(sides, 1e-9)).max())


def pure_pursuit(
    plan_world: np.ndarray, pose: np.ndarray, speed: float, t_since_plan: float
) -> tuple[float, float]:
    """Steering [rad, + = left] and acceleration [m/s^2] tracking `plan_world` (9, 2): the pose at plan time
    followed by the 8 planned positions at 0.5 s steps, world frame."""
    local = world_to_ego(plan_world[1:], pose)
    ahead = local[local[:, 0] > 0.5]
    steer = 0.0
    if len(ahead):
        look = float(np.clip(0.6 * speed + 3.0, 4.0, 20.0))
        kappa_plan = plan_curvature(np.concatenate([[[0.0, 0.0]], ahead]))
        if kappa_plan > 1e-6:
            look = max(MIN_LOOKAHEAD, min(look, math.sqrt(8.0 * CUT_TOLERANCE / kappa_plan)))
        dist = np.hypot(ahead[:, 0], ahead[:, 1])
        target = ahead[int(np.argmax(dist >= look))] if (dist >= look).any() else ahead[-1]
        d = float(np.hypot(*target))
        if d > 1.0:
            kappa = 2.0 * math.sin(math.atan2(target[1], target[0])) / d
            beta = math.asin(float(np.clip(kappa * Vehicle.LENGTH / 2, -1.0, 1.0)))
            steer = float(np.clip(math.atan(2 * math.tan(beta)), -MAX_STEER, MAX_STEER))
    seg = np.hypot(*np.diff(plan_world, axis=0).T) / 0.5  # speed over each 0.5 s segment
    mids = (np.arange(NUM_FUTURE) + 0.5) * 0.5
    v_des = float(np.interp(t_since_plan + 0.5, mids, seg))
    accel = float(np.clip(SPEED_GAIN * (v_des - speed), *ACCEL_LIMITS))
    return steer, accel


class ClosedLoopEnv:
    """One closed-loop episode at a time (see module docstring)."""

    def __init__(self, world_cfg: WorldConfig, duration_s: float = 12.0, record: bool = False) -> None:
        if duration_s <= 0 or abs(duration_s * 2 - round(duration_s * 2)) > 1e-9:
            raise ValueError(
                f"ClosedLoopEnv.duration_s: must be a positive multiple of 0.5 s, got {duration_s}"
            )
        self.cfg = world_cfg
        self.duration_s = duration_s
        self.record = record
        self.world: World | None = None
        self.trace = EgoTrace()
        self.done = True
        self.expert = False

    def reset(self, seed: int, scenario: str, episode_index: int = 0, expert: bool = False) -> AgentInput:
        """Build episode (seed, episode_index) of `scenario`, drive 2 s with the expert, return the input."""
        cfg = dataclasses.replace(self.cfg, seed=seed, scenarios=[scenario])
        rng = np.random.default_rng([seed, episode_index])
        event = choose_event(cfg, scenario, rng)
        self.world = build_world(scenario, rng, cfg.density_of(scenario), event)
        self.tracks, self.trace, self.expert = Tracks(), EgoTrace(), expert
        self.noise = sensor_rng(seed, episode_index)
        self.steps, self.offroad_steps, self.done = 0, 0, False
        self._log()
        for _ in range(NUM_PAST * KEY):
            self._advance()
        if not expert:
            old = self.world.ego
            ego = Vehicle(self.world.road, old.position.copy(), old.heading, old.speed)
            self.world.road.vehicles[self.world.road.vehicles.index(old)] = ego
            self.world.ego = ego
            self.world.road.focus = ego  # type: ignore[attr-defined]
        self.start_step, self.offroad_steps = self.steps, 0
        return self.observation()

    def _log(self) -> None:
        assert self.world is not None
        self.trace.poses.append(ego_pose(self.world.ego))
        self.trace.speeds.append(float(self.world.ego.speed))

    def _advance(self) -> None:
        assert self.world is not None
        self.world.step()
        self.steps += 1
        self.offroad_steps += int(not self.world.ego.on_road)
        self._log()
        if self.world.ego.crashed or self.steps >= NUM_PAST * KEY + round(self.duration_s * SIM_HZ):
            self.done = True

    def observation(self) -> AgentInput:
        """The planner's input now: camera, LiDAR BEV, ego history (2 s), ego status and the route command."""
        assert self.world is not None
        snap = snapshot(self.world, self.tracks)
        camera, bev, labelled = observe(self.world, self.cfg, snap, self.noise)
        if self.record:
            self.trace.frames.append((camera, labelled))
        poses, j = np.array(self.trace.poses), len(self.trace.poses) - 1
        past = poses_to_ego(poses[[j - n * KEY for n in range(NUM_PAST, 0, -1)]], poses[j])
        dyaw = float(np.angle(np.exp(1j * (poses[j][2] - poses[j - 1][2]))))
        status = np.array(
            [self.trace.speeds[j], (self.trace.speeds[j] - self.trace.speeds[j - 1]) * SIM_HZ, dyaw * SIM_HZ],
            np.float32,
        )
        lane, s_on = route_lane(self.world.road.network, self.world.route_edges, self.world.ego)
        roadmap = network(self.world.scenario)[1]
        command = route_command(self.world.scenario, roadmap, self.world.route_edges, lane, s_on)
        return AgentInput(camera, bev, past.astype(np.float32), status, int(command))

    def step(self, plan: np.ndarray | None) -> AgentInput:
        """Track `plan` (8, 3) [m, m, rad] in the current ego frame for 0.5 s; `None` only in expert mode."""
        if self.done or self.world is None:
            raise RuntimeError("ClosedLoopEnv.step: the episode is over; call reset() first")
        if not self.expert:
            plan = np.asarray(plan, np.float64)
            if plan.shape != (NUM_FUTURE, 3) or not np.isfinite(plan).all():
                raise ValueError(f"ClosedLoopEnv.step: plan must be a finite (8, 3) array, got {plan.shape}")
            pose = self.trace.poses[-1]
            c, s = math.cos(pose[2]), math.sin(pose[2])
            world_xy = pose[:2] + plan[:, :2] @ np.array([[c, s], [-s, c]])
            plan_world = np.concatenate([pose[None, :2], world_xy])
        for sub in range(KEY):
            if not self.expert:
                ego = self.world.ego
                steer, accel = pure_pursuit(plan_world, self.trace.poses[-1], float(ego.speed), sub / SIM_HZ)
                ego.action = {"steering": -steer, "acceleration": accel}  # highway-env frame is mirrored
            self._advance()
            if self.done:
                break
        return self.observation()

    def summary(self) -> dict[str, Any]:
        """Collision / off-road flags and the ego's motion since hand-over (for metrics)."""
        assert self.world is not None
        return {
            "collided": bool(self.world.ego.crashed),
            "offroad_steps": self.offroad_steps,
            "poses": np.array(self.trace.poses[self.start_step :]),
            "speeds": np.array(self.trace.speeds[self.start_step :]),
            "scenario": self.world.scenario,
            "route_edges": list(self.world.route_edges),
        }
