"""Hand-made metric scenes with unambiguous PDMS outcomes (tests, benchmarks, docs).

`straight_road_scene`: a straight two-lane road along +x (lane 0 on route: y ∈ [-2, 2]; lane 1:
y ∈ [2, 6]), the ego's rear axle at the origin heading +x, agents moving along x at constant speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.types import AgentClass


@dataclass
class Agent:
    """An agent box moving along +x: start x, y [m], speed [m/s]; static objects use class STATIC."""

    x: float
    y: float
    speed: float = 0.0
    cls: AgentClass = AgentClass.VEHICLE
    length: float = 4.5
    width: float = 2.0


def straight_road_scene(
    speed: float = 10.0,
    agents: Sequence[Agent] = (),
    speed_limit: float = float("nan"),
    token: str = "straight",
    road_length: float = 300.0,
) -> MetricScene:
    """A straight road; the logged human keeps `speed` in lane 0. Agents sampled at 0 … 5 s, 2 Hz."""
    times = np.arange(11) * 0.5
    n = len(agents)
    poses = np.zeros((len(times), n, 3))
    vel = np.zeros((len(times), n, 2))
    for i, a in enumerate(agents):
        poses[:, i, 0] = a.x + a.speed * times
        poses[:, i, 1] = a.y
        vel[:, i, 0] = a.speed
    road = np.array([[-50, -2], [road_length, -2], [road_length, 6], [-50, 6]], float)
    lane0 = np.array([[-50, -2], [road_length, -2], [road_length, 2], [-50, 2]], float)
    lane1 = np.array([[-50, 2], [road_length, 2], [road_length, 6], [-50, 6]], float)
    t = np.arange(1, 9) * 0.5
    return MetricScene(
        token=token,
        ego_pose=np.zeros(3),
        ego_dynamics=np.array([speed, 0.0, 0.0, 0.0]),
        agent_times=times,
        agent_poses=poses,
        agent_velocities=vel,
        agent_sizes=np.array([[a.length, a.width] for a in agents], float).reshape(n, 2),
        agent_valid=np.ones((len(times), n), bool),
        agent_types=np.array([int(a.cls) for a in agents], np.int64),
        agent_static=np.array([a.cls == AgentClass.STATIC for a in agents], bool),
        agent_ids=np.array([f"agent{i}" for i in range(n)]),
        drivable_polygons=[road],
        lane_polygons=[lane0, lane1],
        lane_ids=np.array(["lane0", "lane1"]),
        lane_on_route=np.array([True, False]),
        intersection_polygons=[],
        route=np.array([[-50.0, 0.0], [road_length, 0.0]]),
        human_future=np.stack([speed * t, 0 * t, 0 * t], -1),
        human_valid=np.ones(8, bool),
        speed_limit=speed_limit,
    )


def straight_plan(speed: float, accel: float = 0.0, y: float = 0.0) -> np.ndarray:
    """(8, 3) rear-axle poses along +x: x = v·t + a·t²/2 (stopping at v = 0), constant lateral offset y."""
    t = np.arange(1, 9) * 0.5
    if accel < 0:
        t = np.minimum(t, speed / -accel)
    x = speed * t + 0.5 * accel * t**2
    return np.stack([x, np.full_like(x, y), np.zeros_like(x)], -1)
