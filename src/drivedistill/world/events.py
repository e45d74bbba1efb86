"""Scripted events of the default world: scripts that drive chosen vehicles every 0.1 s.

Each event's `update(world)` runs before the vehicles act and returns True while the event is active
(the label samples get). Vehicles are placed by `world/scenarios.py`; positions are in highway-env's
frame [m], speeds [m/s], accelerations [m/s²], times [s].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from highway_env.vehicle.kinematics import Vehicle

from drivedistill.world.expert import ScriptedVehicle

if TYPE_CHECKING:
    from drivedistill.world.scenarios import World


class Event:
    """A scripted event: `update(world)` runs every step before the vehicles act; returns True while active."""

    name = ""

    def update(self, world: World) -> bool:
        raise NotImplementedError


def _gap(ego: Vehicle, other: Vehicle) -> float:
    """Longitudinal distance [m] from the ego to `other` along the ego heading."""
    return float(ego.direction.dot(other.position - ego.position))


class LeadBrake(Event):
    name = "lead_brake"

    def __init__(self, v: ScriptedVehicle, t_trigger: float, decel: float, v_low: float, hold: float) -> None:
        self.v, self.t0, self.decel, self.v_low, self.hold = v, t_trigger, decel, v_low, hold
        self.t_release: float | None = None
        self.cruise = v.target_speed

    def update(self, world: World) -> bool:
        t = world.time
        if t < self.t0:
            return False
        if self.t_release is None:
            if self.v.speed > self.v_low:
                self.v.override_accel = self.decel
            else:
                self.v.override_accel, self.v.target_speed = None, self.v_low
                self.t_release = t + self.hold
            return True
        if t >= self.t_release:
            self.v.target_speed = self.cruise
            return t < self.t_release + 1.5
        return True


class StopAndGo(Event):
    name = "stop_and_go"

    def __init__(self, head: ScriptedVehicle, period: float) -> None:
        self.head, self.period = head, period

    def update(self, world: World) -> bool:
        stopping = int(world.time / self.period) % 2 == 0
        self.head.target_speed = 0.0 if stopping else 9.0
        self.head.override_accel = -4.0 if stopping and self.head.speed > 0.5 else None
        return -5 < _gap(world.ego, self.head) < 90


# [m/s²] the deceleration a scripted car that cuts in front of the ego leaves it (`CutIn`): the gap it
# takes is at least its minimum gap plus closing_speed² / (2 · YIELD_DECEL), so an expert braking within
# nuPlan's comfort bound (−4.05 m/s², docs/world.md) can absorb it after its 2 m safety margin. A rule of
# 0.6 s of closing speed instead left 7 m/s² of braking at 10 m/s closing speed: the expert braked at
# 8 m/s² (comfort C 0, TTC 0) on `highway-s0-e1000025` and `merge-s0-e1000036`. (The on-ramp `Merge`
# keeps its 0.8 s rule: with this one its car found no gap, reached the end of the acceleration lane
# and was pushed into the ego's side, in training episode 261.)
YIELD_DECEL = 3.0


def _closing_gap(closing: float) -> float:
    """[m] the distance a car closing in at `closing` [m/s] needs to match speeds at YIELD_DECEL."""
    return max(0.0, closing) ** 2 / (2 * YIELD_DECEL)


class CutIn(Event):
    """A slower car in the next lane steers into the ego lane when the ego is `trigger_gap` metres
    (centre to centre) behind it — or earlier when the ego closes in fast: the cut-in car leaves at least
    `MIN_GAP` metres bumper to bumper plus the distance the ego needs to match its speed at YIELD_DECEL
    (an assertive cut-in a driver absorbs with firm, comfortable braking; a 6 m trigger at 10 m/s closing
    speed was a collision no brakes could prevent, and 0.6 s of closing speed needed 7 m/s²)."""

    name = "cut_in"
    MIN_GAP = 2.0  # [m]

    def __init__(self, v: ScriptedVehicle, trigger_gap: float) -> None:
        self.v, self.trigger_gap = v, trigger_gap
        self.t0: float | None = None

    def update(self, world: World) -> bool:
        if self.t0 is None:
            ego, v = world.ego, self.v
            needed = (ego.LENGTH + v.LENGTH) / 2 + self.MIN_GAP + _closing_gap(ego.speed - v.speed)
            if world.time >= 2.0 and 0 < _gap(ego, v) < max(self.trigger_gap, needed):
                self.t0 = world.time
                self.v.target_lane_index = world.ego.lane_index
            return False
        return world.time < self.t0 + 4.0


class Merge(Event):
    """An on-ramp vehicle that merges onto the main road from the acceleration lane; active while near
    the ego. Like an assertive driver it takes the first gap that is physically there — at least
    `MIN_GAP` metres bumper to bumper plus 0.5 s (front) / 0.8 s (rear) of closing speed, so the car
    behind usually has to brake — and, finding none after `BRAKE_AFTER` metres of the acceleration lane,
    brakes to drop behind the car alongside, and stops before the end of the acceleration lane if it still
    has none. (It used to merge unconditionally at the start of the lane: side impacts into cars
    alongside that no driver could avoid.)"""

    name = "cut_in"
    MIN_GAP = 3.0  # [m]
    BRAKE_AFTER = 20.0  # [m] along the acceleration lane
    BRAKE = -3.0  # [m/s²]
    STOP_MAX = 8.0  # [m/s²] hardest braking to stop before the end of the acceleration lane

    def __init__(self, v: ScriptedVehicle) -> None:
        self.v, self.t0 = v, math.inf

    def update(self, world: World) -> bool:
        v = self.v
        if v.lane_index == ("b", "c", 2) and v.target_lane_index[2] == 2:
            if self._gap_free(world):
                v.target_lane_index = ("b", "c", 1)
                v.override_accel = None
                self.t0 = world.time
            else:
                s = v.lane.local_coordinates(v.position)[0]
                left = v.lane.length - s - v.LENGTH / 2 - 1.0  # [m] to 1 m before the lane's end
                if left < v.speed**2 / (2 * -self.BRAKE) + 1.0:
                    # no gap before the end of the acceleration lane: stop there and wait for one (at its
                    # end highway-env hands the car to the main-road lane, into the side of whoever is
                    # alongside — training episode 261 rammed the expert so)
                    v.override_accel = -min(self.STOP_MAX, v.speed**2 / (2 * max(left, 0.5)))
                elif s > self.BRAKE_AFTER:
                    v.override_accel = self.BRAKE  # no gap yet: drop back behind the car alongside
        return self.t0 <= world.time < self.t0 + 4.0 and -5 < _gap(world.ego, v) < 40

    def _gap_free(self, world: World) -> bool:
        v = self.v
        front, rear = world.road.neighbour_vehicles(v, ("b", "c", 1))
        lane = world.road.network.get_lane(("b", "c", 1))
        s = lane.local_coordinates(v.position)[0]
        if front is not None:
            gap = lane.local_coordinates(front.position)[0] - s - (front.LENGTH + v.LENGTH) / 2
            if gap < self.MIN_GAP + 0.5 * max(0.0, v.speed - front.speed):
                return False
        if rear is not None:
            gap = s - lane.local_coordinates(rear.position)[0] - (rear.LENGTH + v.LENGTH) / 2
            if gap < self.MIN_GAP + 0.8 * max(0.0, rear.speed - v.speed):
                return False
        return True


class StoppedVehicle(Event):
    name = "stopped_vehicle"

    def __init__(self, v: ScriptedVehicle) -> None:
        self.v = v

    def update(self, world: World) -> bool:
        return -5 < _gap(world.ego, self.v) < 70


class CrossTraffic(Event):
    """Active while the challenger (if it could be placed) is inside the junction area."""

    name = "cross_traffic"

    def __init__(self, v: Vehicle | None, junction: tuple[np.ndarray, float]) -> None:
        self.v, self.junction = v, junction  # junction: centre (2,) world frame [m], radius [m]

    def update(self, world: World) -> bool:
        if self.v is None or self.v not in world.road.vehicles:
            return False
        centre, radius = self.junction
        return bool(np.linalg.norm(self.v.position - centre * [1, -1]) < radius)
