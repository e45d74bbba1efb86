"""Per-scene geometry precomputed once for scoring: map unions / lane index, agent boxes at 10 Hz.

- `MapIndex`: prepared unions of the drivable area (drivable + intersection polygons), the on-route
  lanes and the intersections, plus an STRtree over lane polygons — queried with whole arrays of points.
- `AgentBoxes`: agent boxes on the 0.1 s grid, either replayed from the log (linear interpolation of the
  2 Hz samples, present only inside each track's observed span) or forecast at constant velocity from
  t = 0 (PDM-Closed's own observation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.planar import box_corners, normalize_angle
from drivedistill.types import AgentClass

STOPPED_TRACK_SPEED = 5e-3  # [m/s] nuPlan's is_track_stopped threshold


def _union(polygons: list[np.ndarray]) -> shapely.Geometry:
    geoms = [shapely.make_valid(shapely.Polygon(p)) for p in polygons]
    union = shapely.union_all(geoms) if geoms else shapely.Polygon()
    shapely.prepare(union)
    return union


class MapIndex:
    """Map queries of one scene, built once (the polygons are in the scene's scoring frame)."""

    def __init__(self, scene: MetricScene) -> None:
        self.drivable = _union(scene.drivable_polygons + scene.intersection_polygons)
        on_route = [p for p, r in zip(scene.lane_polygons, scene.lane_on_route) if r]
        self.on_route = _union(on_route)
        self.intersection = _union(scene.intersection_polygons)
        self.lanes = [shapely.make_valid(shapely.Polygon(p)) for p in scene.lane_polygons]
        self.lane_tree = shapely.STRtree(self.lanes)
        self.lane_bounds = shapely.bounds(self.lanes).reshape(-1, 4)
        shapely.prepare(self.lanes)

    def in_drivable(self, xy: np.ndarray) -> np.ndarray:
        """(...) bool: points (..., 2) inside the drivable area."""
        return shapely.contains_xy(self.drivable, xy[..., 0], xy[..., 1])

    def in_on_route_lane(self, xy: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(self.on_route, xy[..., 0], xy[..., 1])

    def in_intersection(self, xy: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(self.intersection, xy[..., 0], xy[..., 1])

    def multiple_lanes(self, corners: np.ndarray) -> np.ndarray:
        """(...) bool for ego corners (..., 4, 2): corners in > 1 lane polygon and no lane holds all four."""
        lead = corners.shape[:-2]
        xy = corners.reshape(-1, 2)
        if not self.lanes or len(xy) == 0:
            return np.zeros(lead, bool)
        candidates = self.lane_tree.query(shapely.box(*xy.min(0), *xy.max(0)))
        inside = np.zeros((len(xy), len(candidates)), bool)
        for k, j in enumerate(candidates):  # lanes near the proposals only, points prefiltered by bounds
            x0, y0, x1, y1 = self.lane_bounds[j]
            m = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
            inside[m, k] = shapely.contains_xy(self.lanes[j], xy[m, 0], xy[m, 1])
        per_box = inside.reshape(-1, 4, len(candidates))
        n_lanes = per_box.any(1).sum(-1)
        single = per_box.all(1).any(-1)
        return ((n_lanes > 1) & ~single).reshape(lead)


@dataclass
class AgentBoxes:
    """Agent boxes on a 0.1 s grid. T steps, A agents.

    centers (T, A, 2), yaw (T, A), corners (T, A, 4, 2) [m, rad], valid (T, A),
    radius (A,) half-diagonal [m], stopped (A,) static or first observed speed ≤ 5 mm/s,
    fault_score (A,) NC value of an at-fault collision: 0 for vehicles/pedestrians/bicycles, ½ static.
    """

    centers: np.ndarray
    yaw: np.ndarray
    corners: np.ndarray
    valid: np.ndarray
    radius: np.ndarray
    stopped: np.ndarray
    fault_score: np.ndarray

    @classmethod
    def build(cls, scene: MetricScene, centers: np.ndarray, yaw: np.ndarray, valid: np.ndarray) -> AgentBoxes:
        length, width = scene.agent_sizes[:, 0], scene.agent_sizes[:, 1]
        corners = box_corners(centers, yaw, length[None], width[None])
        speeds = np.hypot(scene.agent_velocities[..., 0], scene.agent_velocities[..., 1])
        first = np.argmax(scene.agent_valid, axis=0)
        first_speed = speeds[first, np.arange(speeds.shape[1])] if speeds.size else np.zeros(0)
        stopped = scene.agent_static | (np.nan_to_num(first_speed, nan=0.0) <= STOPPED_TRACK_SPEED)
        fault = np.where(scene.agent_types == AgentClass.STATIC, 0.5, 0.0)
        radius = 0.5 * np.hypot(length, width)
        return cls(centers, yaw, corners, valid & np.isfinite(centers).all(-1), radius, stopped, fault)

    @property
    def num_steps(self) -> int:
        return int(self.centers.shape[0])


def replay_agents(scene: MetricScene, dt: float = 0.1) -> AgentBoxes:
    """Log replay: samples at `scene.agent_times` interpolated to the `dt` grid over their span."""
    times = scene.agent_times
    grid = np.arange(round(float(times[-1]) / dt) + 1) * dt
    hi = np.clip(np.searchsorted(times, grid - 1e-9), 0, len(times) - 1)
    lo = np.clip(hi - 1, 0, None)
    exact = np.isclose(times[hi], grid)
    lo = np.where(exact, hi, lo)
    span = np.maximum(times[hi] - times[lo], 1e-9)
    frac = np.where(exact, 0.0, (grid - times[lo]) / span)[:, None]
    p0, p1 = scene.agent_poses[lo], scene.agent_poses[hi]
    centers = p0[..., :2] + frac[..., None] * (p1[..., :2] - p0[..., :2])
    yaw = p0[..., 2] + frac * normalize_angle(p1[..., 2] - p0[..., 2])
    valid = scene.agent_valid[lo] & scene.agent_valid[hi]
    return AgentBoxes.build(scene, centers, yaw, valid)


def constant_velocity_agents(scene: MetricScene, num_steps: int, dt: float = 0.1) -> AgentBoxes:
    """Forecast: agents valid at t = 0 move with their t = 0 velocity (static objects stay) for num_steps."""
    t = np.arange(num_steps) * dt
    pose0, vel0 = scene.agent_poses[0], scene.agent_velocities[0]
    vel0 = np.where(scene.agent_static[:, None], 0.0, np.nan_to_num(vel0))
    centers = pose0[None, :, :2] + t[:, None, None] * vel0[None]
    yaw = np.repeat(pose0[None, :, 2], num_steps, axis=0)
    valid = np.repeat(scene.agent_valid[None, 0], num_steps, axis=0)
    return AgentBoxes.build(scene, centers, yaw, valid)
