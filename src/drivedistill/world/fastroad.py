"""highway-env roads that only look at nearby vehicles (same behaviour, O(N) instead of O(N²) Python).

highway-env's `Road.neighbour_vehicles` scans every vehicle with a Python lane projection, and
`Road.step` tests every pair for collisions; with 20 vehicles that is most of an episode's time. These
subclasses pre-filter with one numpy distance computation per step: neighbour search sees vehicles
within `NEIGHBOUR_RANGE`, collision tests only pairs closer than `COLLISION_RANGE`, and the priority
rules of the regulated (intersection) road only vehicles within `NEIGHBOUR_RANGE` of the ego.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from highway_env import utils
from highway_env.road.regulation import RegulatedRoad
from highway_env.road.road import Road
from highway_env.vehicle.objects import Landmark

NEIGHBOUR_RANGE = 90.0  # [m] beyond it a vehicle cannot be anyone's leader/follower of interest
COLLISION_RANGE = 12.0  # [m] centre distance below which a pair is tested for overlap


class FastRoad(Road):
    """`Road` with distance pre-filtering; `focus` is the ego (used by the regulated variant)."""

    focus: Any = None
    vehicles: list[Any]

    _near: np.ndarray | None = None  # (N, N) bool, vehicles within NEIGHBOUR_RANGE, valid during act()
    _index: dict[int, int]

    def _positions(self) -> np.ndarray:
        return np.array([v.position for v in self.vehicles], np.float64).reshape(-1, 2)

    def act(self) -> None:
        pos = self._positions()
        self._near = np.abs(pos[:, None] - pos[None]).max(axis=-1) < NEIGHBOUR_RANGE
        self._index = {id(v): i for i, v in enumerate(self.vehicles)}
        try:
            super().act()
        finally:
            self._near = None  # positions change in step()

    def _candidates(self, vehicle: Any) -> list[Any]:
        """Vehicles within NEIGHBOUR_RANGE (L∞) of `vehicle`."""
        i = self._index.get(id(vehicle)) if self._near is not None else None
        if i is not None and self._near is not None and len(self._near) == len(self.vehicles):
            return [self.vehicles[j] for j in np.flatnonzero(self._near[i]).tolist()]
        pos = self._positions()
        near = np.abs(pos - vehicle.position).max(axis=1) < NEIGHBOUR_RANGE
        return [v for v, keep in zip(self.vehicles, near) if keep]

    def neighbour_vehicles(self, vehicle: Any, lane_index: Any = None) -> tuple[Any, Any]:
        """`Road.neighbour_vehicles` (leader and follower on `lane_index`) over nearby vehicles only."""
        if self.neighbour_vehicles_connected_lanes:
            full: list[Any] = self.vehicles
            self.vehicles = self._candidates(vehicle)
            try:
                return super().neighbour_vehicles(vehicle, lane_index)
            finally:
                self.vehicles = full
        lane_index = lane_index or vehicle.lane_index
        if not lane_index:
            return None, None
        lane = self.network.get_lane(lane_index)
        s = lane.local_coordinates(vehicle.position)[0]
        s_front = s_rear = None
        v_front = v_rear = None
        for v in self._candidates(vehicle) + self.objects:
            if v is vehicle or isinstance(v, Landmark):
                continue
            s_v, lat_v = lane.local_coordinates(v.position)
            if not lane.on_lane(v.position, s_v, lat_v, margin=1):
                continue
            if s <= s_v and (s_front is None or s_v <= s_front):
                s_front, v_front = s_v, v
            if s_v < s and (s_rear is None or s_v > s_rear):
                s_rear, v_rear = s_v, v
        return v_front, v_rear

    def step(self, dt: float) -> None:
        for vehicle in self.vehicles:
            vehicle.step(dt)
        pos = self._positions()
        if len(pos) > 1:
            d = np.hypot(pos[:, None, 0] - pos[None, :, 0], pos[:, None, 1] - pos[None, :, 1])
            for i, j in zip(*np.nonzero(np.triu(d < COLLISION_RANGE, k=1))):
                self.vehicles[i].handle_collisions(self.vehicles[j], dt)
        for vehicle in self.vehicles:
            for other in self.objects:
                vehicle.handle_collisions(other, dt)


class FastRegulatedRoad(FastRoad, RegulatedRoad):
    """`RegulatedRoad` (priority yielding at intersections) restricted to vehicles near the ego.

    Its pairwise conflict test predicts both vehicles 3 s along their routes; here each vehicle's
    prediction is computed once per regulation step, not once per pair (same answers). A distance
    pre-filter would not be exact: highway-env's route prediction can start far from the car when the
    route's head is already the next road."""

    _pred: dict[int, tuple[np.ndarray, np.ndarray]]

    def enforce_road_rules(self) -> None:
        self._pred = {}
        try:
            super().enforce_road_rules()
        finally:
            self._pred = {}

    def is_conflict_possible(self, v1: Any, v2: Any, horizon: int = 3, step: float = 0.25) -> bool:  # type: ignore[override]
        times = np.arange(step, horizon, step)
        p1, h1 = self._predict(v1, times)
        p2, h2 = self._predict(v2, times)
        close = np.flatnonzero(np.linalg.norm(p2 - p1, axis=1) <= v1.LENGTH)  # highway-env's pre-check
        return any(
            utils.rotated_rectangles_intersect(
                (p1[i], 1.5 * v1.LENGTH, 0.9 * v1.WIDTH, h1[i]),
                (p2[i], 1.5 * v2.LENGTH, 0.9 * v2.WIDTH, h2[i]),
            )
            for i in close.tolist()
        )

    def _predict(self, v: Any, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, 2) positions and (T,) headings of `v` along its route at constant speed (cached per step)."""
        key = id(v)
        if key not in self._pred:
            positions, headings = v.predict_trajectory_constant_speed(times)
            self._pred[key] = (np.asarray(positions, np.float64), np.asarray(headings, np.float64))
        return self._pred[key]

    def step(self, dt: float) -> None:
        self.steps += 1
        if self.steps % int(1 / dt / self.REGULATION_FREQUENCY) == 0:
            full = self.vehicles
            if self.focus is not None:
                self.vehicles = [
                    v for v in full if np.abs(v.position - self.focus.position).max() < NEIGHBOUR_RANGE
                ]
            try:
                self.enforce_road_rules()
            finally:
                self.vehicles = full
        FastRoad.step(self, dt)
