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
from highway_env.road.regulation import RegulatedRoad
from highway_env.road.road import Road

NEIGHBOUR_RANGE = 90.0  # [m] beyond it a vehicle cannot be anyone's leader/follower of interest
COLLISION_RANGE = 12.0  # [m] centre distance below which a pair is tested for overlap


class FastRoad(Road):
    """`Road` with distance pre-filtering; `focus` is the ego (used by the regulated variant)."""

    focus: Any = None
    vehicles: list[Any]

    def _positions(self) -> np.ndarray:
        return np.array([v.position for v in self.vehicles], np.float64).reshape(-1, 2)

    def act(self) -> None:
        self._pos = self._positions()
        super().act()

    def neighbour_vehicles(self, vehicle: Any, lane_index: Any = None) -> tuple[Any, Any]:
        full: list[Any] = self.vehicles
        pos = getattr(self, "_pos", None)
        if pos is None or len(pos) != len(full):
            pos = self._positions()
        near = np.abs(pos - vehicle.position).max(axis=1) < NEIGHBOUR_RANGE
        self.vehicles = [v for v, keep in zip(full, near) if keep]
        try:
            return super().neighbour_vehicles(vehicle, lane_index)
        finally:
            self.vehicles = full

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
    """`RegulatedRoad` (priority yielding at intersections) restricted to vehicles near the ego."""

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
