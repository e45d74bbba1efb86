"""Scalar fast paths for highway-env's per-vehicle Python (same models, less interpreter overhead).

highway-env evaluates lane geometry and the IDM/MOBIL driver with numpy calls on 2-vectors and scalars
(`np.dot`, `np.clip`, `np.arcsin` ...), ~1–5 µs each, tens of thousands of times per episode, and finds
every vehicle's lane after every step by scanning *all* lanes of the network. This module keeps the
models and replaces the overhead:

- `FastStraightLane`, `FastSineLane`, `FastCircularLane`: the same lane geometry in `math` on floats.
- `FastRoadNetwork.get_closest_lane_index`: the same arg-min of `distance_with_heading`, over the lanes
  that pass within `GUARD` metres of a `CELL`-metre grid cell around the position (a full scan when no
  candidate is closer than `GUARD`, so the answer is the same as highway-env's).
- `FastIDMVehicle`: IDM + MOBIL with `math` instead of scalar numpy (act, steering, IDM acceleration).

`speed_up(network)` converts a network built by highway-env in place (class swap of lanes and network;
the lanes' data are unchanged). Frames are highway-env's (y down), units metres, seconds, radians.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from highway_env import utils
from highway_env.road.lane import AbstractLane, CircularLane, SineLane, StraightLane
from highway_env.road.road import RoadNetwork
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

CELL = 10.0  # [m] grid cell of the lane index
GUARD = 12.0  # [m] lanes farther than this from a cell are not candidates for it
TWO_PI = 2.0 * math.pi


def _wrap(x: float) -> float:
    """Angle wrapped to [-pi, pi) [rad] (highway-env's `wrap_to_pi`, on floats)."""
    return (x + math.pi) % TWO_PI - math.pi


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class _FastLaneMixin:
    """Distance and on-lane tests of `AbstractLane` on floats (needs `local_coordinates`, `heading_at`)."""

    length: float
    width: float
    VEHICLE_LENGTH: float

    def local_coordinates(self, position: Any) -> tuple[float, float]:
        raise NotImplementedError

    def heading_at(self, longitudinal: float) -> float:
        raise NotImplementedError

    def distance_with_heading(
        self, position: Any, heading: float | None, heading_weight: float = 1.0
    ) -> float:
        s, r = self.local_coordinates(position)
        d = abs(r) + max(s - self.length, 0.0) + max(-s, 0.0)
        if heading is None:
            return d
        return d + heading_weight * abs(_wrap(float(heading) - self.heading_at(s)))

    def on_lane(
        self,
        position: Any,
        longitudinal: float | None = None,
        lateral: float | None = None,
        margin: float = 0,
    ) -> bool:
        if longitudinal is None or lateral is None:
            longitudinal, lateral = self.local_coordinates(position)
        return (
            abs(lateral) <= self.width / 2 + margin
            and -self.VEHICLE_LENGTH <= longitudinal < self.length + self.VEHICLE_LENGTH
        )


class FastStraightLane(_FastLaneMixin, StraightLane):
    """`StraightLane` on floats (constant width)."""

    def local_coordinates(self, position: Any) -> tuple[float, float]:
        dx, dy = float(position[0]) - self._sx, float(position[1]) - self._sy
        return dx * self._dx + dy * self._dy, -dx * self._dy + dy * self._dx

    def position(self, longitudinal: float, lateral: float) -> np.ndarray:
        s, r = float(longitudinal), float(lateral)
        return np.array((self._sx + s * self._dx - r * self._dy, self._sy + s * self._dy + r * self._dx))

    def heading_at(self, longitudinal: float) -> float:
        return self._heading

    def positions(self, s: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """(N, 2) positions at lane coordinates s, lat (N,) [m] (vectorised `position`)."""
        return np.stack(
            [self._sx + s * self._dx - lat * self._dy, self._sy + s * self._dy + lat * self._dx], 1
        )

    def headings(self, s: np.ndarray) -> np.ndarray:
        """(N,) lane headings [rad] at s (N,) [m] (vectorised `heading_at`)."""
        return np.full(np.shape(s), self._heading)

    def _prepare(self) -> None:
        self._sx, self._sy = float(self.start[0]), float(self.start[1])
        self._dx, self._dy = float(self.direction[0]), float(self.direction[1])
        self._heading = float(self.heading)


class FastSineLane(FastStraightLane, SineLane):
    """`SineLane` on floats."""

    def local_coordinates(self, position: Any) -> tuple[float, float]:
        s, r = FastStraightLane.local_coordinates(self, position)
        return s, r - self.amplitude * math.sin(self.pulsation * s + self.phase)

    def position(self, longitudinal: float, lateral: float) -> np.ndarray:
        s = float(longitudinal)
        return FastStraightLane.position(
            self, s, float(lateral) + self.amplitude * math.sin(self.pulsation * s + self.phase)
        )

    def heading_at(self, longitudinal: float) -> float:
        return self._heading + math.atan(
            self.amplitude * self.pulsation * math.cos(self.pulsation * float(longitudinal) + self.phase)
        )

    def positions(self, s: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return FastStraightLane.positions(
            self, s, lat + self.amplitude * np.sin(self.pulsation * s + self.phase)
        )

    def headings(self, s: np.ndarray) -> np.ndarray:
        return self._heading + np.arctan(
            self.amplitude * self.pulsation * np.cos(self.pulsation * s + self.phase)
        )


class FastCircularLane(_FastLaneMixin, CircularLane):
    """`CircularLane` on floats."""

    def local_coordinates(self, position: Any) -> tuple[float, float]:
        dx, dy = float(position[0]) - self._cx, float(position[1]) - self._cy
        phi = self.start_phase + _wrap(math.atan2(dy, dx) - self.start_phase)
        return (
            self.direction * (phi - self.start_phase) * self.radius,
            self.direction * (self.radius - math.hypot(dx, dy)),
        )

    def position(self, longitudinal: float, lateral: float) -> np.ndarray:
        phi = self.direction * float(longitudinal) / self.radius + self.start_phase
        rr = self.radius - float(lateral) * self.direction
        return np.array((self._cx + rr * math.cos(phi), self._cy + rr * math.sin(phi)))

    def heading_at(self, longitudinal: float) -> float:
        phi = self.direction * float(longitudinal) / self.radius + self.start_phase
        return phi + math.pi / 2 * self.direction

    def positions(self, s: np.ndarray, lat: np.ndarray) -> np.ndarray:
        phi = self.direction * s / self.radius + self.start_phase
        rr = self.radius - lat * self.direction
        return np.stack([self._cx + rr * np.cos(phi), self._cy + rr * np.sin(phi)], 1)

    def headings(self, s: np.ndarray) -> np.ndarray:
        return self.direction * s / self.radius + self.start_phase + math.pi / 2 * self.direction

    def _prepare(self) -> None:
        self._cx, self._cy = float(self.center[0]), float(self.center[1])


FAST_LANES: dict[type, type] = {
    StraightLane: FastStraightLane,
    SineLane: FastSineLane,
    CircularLane: FastCircularLane,
}


class FastRoadNetwork(RoadNetwork):
    """`RoadNetwork` whose closest-lane query only scans lanes near the position (see module docstring)."""

    _cells: dict[tuple[int, int], list[tuple[tuple[str, str, int], AbstractLane]]]
    _all: list[tuple[tuple[str, str, int], AbstractLane]]

    def _build_index(self) -> None:
        self._all = [
            ((f, t, i), lane)
            for f, tos in self.graph.items()
            for t, ls in tos.items()
            for i, lane in enumerate(ls)
        ]
        reach = GUARD + CELL * math.sqrt(0.5) + 2.0  # cell centre to corner, plus the sampling step
        cells: dict[tuple[int, int], list[tuple[tuple[str, str, int], AbstractLane]]] = {}
        for key, lane in self._all:
            s = np.linspace(0.0, lane.length, max(2, math.ceil(lane.length / 2.0) + 1))
            pts = np.array([lane.position(float(v), 0.0) for v in s])
            lo = np.floor((pts.min(axis=0) - reach) / CELL).astype(int)
            hi = np.floor((pts.max(axis=0) + reach) / CELL).astype(int)
            for cx in range(lo[0], hi[0] + 1):
                for cy in range(lo[1], hi[1] + 1):
                    centre = (np.array([cx, cy]) + 0.5) * CELL
                    if np.hypot(*(pts - centre).T).min() < reach + lane.width / 2:
                        cells.setdefault((cx, cy), []).append((key, lane))
        self._cells = cells

    def get_closest_lane_index(self, position: Any, heading: float | None = None) -> tuple[str, str, int]:
        cell = (math.floor(float(position[0]) / CELL), math.floor(float(position[1]) / CELL))
        best, best_d = None, math.inf
        for key, lane in self._cells.get(cell, ()):
            d = lane.distance_with_heading(position, heading)
            if d < best_d:
                best, best_d = key, d
        if best is not None and best_d < GUARD:
            return best
        for key, lane in self._all:  # far from every lane: the exhaustive scan decides
            d = lane.distance_with_heading(position, heading)
            if d < best_d:
                best, best_d = key, d
        assert best is not None
        return best


def speed_up(network: RoadNetwork) -> RoadNetwork:
    """Swap the classes of `network` and its lanes to the fast variants above (in place; returns it)."""
    for tos in network.graph.values():
        for lanes in tos.values():
            for lane in lanes:
                fast = FAST_LANES.get(type(lane))
                if fast is None:
                    raise TypeError(f"fastsim.speed_up: no fast variant of {type(lane).__name__}")
                lane.__class__ = fast
                lane._prepare()  # type: ignore[attr-defined]
    network.__class__ = FastRoadNetwork
    network._build_index()  # type: ignore[attr-defined]
    return network


class FastIDMVehicle(IDMVehicle):
    """highway-env's IDM + MOBIL vehicle with its per-step arithmetic on floats (same decisions)."""

    MAX_HEADING_OFFSET = math.pi / 4  # [rad] largest heading offset from the lane used to reach it

    position: np.ndarray  # (2,) [m]
    heading: float  # [rad]
    speed: float  # [m/s]
    impact: np.ndarray | None

    def act(self, action: dict | str | None = None) -> None:
        if self.crashed:
            return
        self.follow_road()
        if self.enable_lane_change:
            self.change_lane_policy()
        steer = _clip(
            self.steering_control(self.target_lane_index), -self.MAX_STEERING_ANGLE, self.MAX_STEERING_ANGLE
        )
        front, rear = self.road.neighbour_vehicles(self, self.lane_index)
        accel = self.acceleration(ego_vehicle=self, front_vehicle=front, rear_vehicle=rear)
        if self.lane_index != self.target_lane_index:  # changing lane: respect both lanes' leaders
            front, rear = self.road.neighbour_vehicles(self, self.target_lane_index)
            accel = min(accel, self.acceleration(ego_vehicle=self, front_vehicle=front, rear_vehicle=rear))
        Vehicle.act(self, {"steering": steer, "acceleration": _clip(accel, -self.ACC_MAX, self.ACC_MAX)})

    def step(self, dt: float) -> None:
        """Kinematic bicycle step of `Vehicle.step` on floats (same integration), then the lane lookup."""
        self.timer += dt
        self.clip_actions()
        beta = math.atan(0.5 * math.tan(self.action["steering"]))
        speed, heading = float(self.speed), float(self.heading)
        self.position[0] += speed * math.cos(heading + beta) * dt
        self.position[1] += speed * math.sin(heading + beta) * dt
        if self.impact is not None:
            self.position += self.impact
            self.crashed = True
            self.impact = None
        self.heading = heading + speed * math.sin(beta) / (self.LENGTH / 2) * dt
        # a car brakes to a stop, never through it: highway-env integrates the IDM's braking into reverse,
        # and traffic then backed into junctions at up to 2 m/s (a car reversing onto the expert in
        # `intersection-s0-e00028`, docs/world.md)
        self.speed = max(0.0, speed + self.action["acceleration"] * dt)
        self.on_state_update()

    def _is_colliding(self, other: Any, dt: float) -> tuple[bool, bool, np.ndarray | None]:
        """highway-env's test, with an exact early exit: if the two boxes, swept by this step's motion,
        are separated along one of this box's own axes (the first axes highway-env's separating-axis
        loop tries), neither overlap nor impact is possible."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        dx, dy = float(other.position[0] - self.position[0]), float(other.position[1] - self.position[1])
        rel = float(other.heading) - float(self.heading)
        cr, sr = abs(math.cos(rel)), abs(math.sin(rel))
        vx = (float(self.speed) * c - float(other.speed) * math.cos(other.heading)) * dt
        vy = (float(self.speed) * s - float(other.speed) * math.sin(other.heading)) * dt
        for nx, ny, half_self, half_other in (
            (c, s, self.LENGTH / 2, other.LENGTH / 2 * cr + other.WIDTH / 2 * sr),
            (-s, c, self.WIDTH / 2, other.LENGTH / 2 * sr + other.WIDTH / 2 * cr),
        ):
            centre = nx * dx + ny * dy  # other's centre relative to ours, along the axis
            sweep = nx * vx + ny * vy  # our interval grows by our relative motion along the axis
            lo, hi = -half_self + min(sweep, 0.0), half_self + max(sweep, 0.0)
            if centre - half_other > hi or centre + half_other < lo:
                return False, False, np.zeros(2)
        return super()._is_colliding(other, dt)

    def steering_control(self, target_lane_index: Any) -> float:
        lane = self.road.network.get_lane(target_lane_index)
        s, r = lane.local_coordinates(self.position)
        speed = utils.not_zero(float(self.speed))
        future_heading = lane.heading_at(s + self.speed * self.TAU_PURSUIT)
        heading_command = math.asin(_clip(-self.KP_LATERAL * r / speed, -1.0, 1.0))
        limit = self.MAX_HEADING_OFFSET
        heading_ref = future_heading + _clip(heading_command, -limit, limit)
        rate = self.KP_HEADING * _wrap(heading_ref - float(self.heading))
        slip = math.asin(_clip(self.LENGTH / 2 / speed * rate, -1.0, 1.0))
        return _clip(math.atan(2 * math.tan(slip)), -self.MAX_STEERING_ANGLE, self.MAX_STEERING_ANGLE)

    def acceleration(self, ego_vehicle: Any, front_vehicle: Any = None, rear_vehicle: Any = None) -> float:
        if not ego_vehicle or not isinstance(ego_vehicle, Vehicle):
            return 0.0
        target = float(getattr(ego_vehicle, "target_speed", 0))
        lane = ego_vehicle.lane
        if lane and lane.speed_limit is not None:
            target = _clip(target, 0.0, float(lane.speed_limit))
        accel = self.COMFORT_ACC_MAX * (
            1 - (max(float(ego_vehicle.speed), 0.0) / abs(utils.not_zero(target))) ** self.DELTA
        )
        if front_vehicle:
            d = ego_vehicle.lane_distance_to(front_vehicle)
            accel -= (
                self.COMFORT_ACC_MAX * (self.desired_gap(ego_vehicle, front_vehicle) / utils.not_zero(d)) ** 2
            )
        return accel

    def desired_gap(self, ego_vehicle: Any, front_vehicle: Any = None, projected: bool = True) -> float:
        ego_speed = float(ego_vehicle.speed)
        if projected:
            h = float(ego_vehicle.heading)
            hf = float(front_vehicle.heading)
            fs = float(front_vehicle.speed)
            dv = ego_speed - fs * (math.cos(hf) * math.cos(h) + math.sin(hf) * math.sin(h))
        else:
            dv = ego_speed - float(front_vehicle.speed)
        ab = -self.COMFORT_ACC_MAX * self.COMFORT_ACC_MIN
        return self.DISTANCE_WANTED + ego_speed * self.TIME_WANTED + ego_speed * dv / (2 * math.sqrt(ab))
