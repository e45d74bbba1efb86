"""Static road geometry of a highway-env road network, sampled once, cropped per frame.

**World frame.** highway-env's simulation frame is drawn with y pointing down, which makes it a mirror
image of a right-handed frame (its lane 0 is the *left* lane, its vehicles drive on the right on screen).
drivedistill's world frame is that frame mirrored: ``x_w = x_h``, ``y_w = -y_h``, ``yaw_w = -yaw_h`` —
right-handed, yaw counter-clockwise, traffic on the right, left turns turn left. `to_world` is the one
place where the mirror happens; everything drivedistill stores is in the world or the ego frame.

Lanes are sampled every `SAMPLE_STEP` metres: centreline, left and right edges, plus marking polygons
(continuous strips and 3 m dashes every 9 m, as highway-env paints them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from highway_env.road.lane import AbstractLane, LineType
from highway_env.road.road import RoadNetwork

SAMPLE_STEP = 2.0  # [m] spacing of lane samples
MARKING_WIDTH = 0.2  # [m]
DASH_LENGTH, DASH_PERIOD = 3.0, 9.0  # [m]

LaneKey = tuple[str, str, int]


def to_world(position: np.ndarray, heading: float) -> tuple[np.ndarray, float]:
    """highway-env position (2,) and heading [rad] → world-frame position (2,) and yaw (the mirror)."""
    return np.array([position[0], -position[1]], np.float64), -float(heading)


def world_to_ego(xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(N, 2) world points → (N, 2) in the frame of `pose` = (x, y, yaw) [m, m, rad]."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    d = np.asarray(xy, np.float64) - pose[:2]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def poses_to_ego(poses: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(N, 3) world poses → (N, 3) poses in the frame of `pose`, yaw wrapped to (-pi, pi]."""
    xy = world_to_ego(poses[:, :2], pose)
    yaw = np.angle(np.exp(1j * (poses[:, 2] - pose[2])))
    return np.concatenate([xy, yaw[:, None]], axis=1)


def _lane_points(lane: AbstractLane, s: np.ndarray, lateral: float | np.ndarray) -> np.ndarray:
    lat = np.broadcast_to(np.asarray(lateral, np.float64), s.shape)
    pts = np.array([lane.position(float(si), float(li)) for si, li in zip(s, lat)], np.float64)
    return np.stack([pts[:, 0], -pts[:, 1]], axis=1)


@dataclass
class RoadMap:
    """All lanes of a network, world frame. Arrays are concatenated over lanes; `lane_of` maps samples.

    keys          lane keys (from, to, id), in network order
    center/left/right  (S, 2) samples [m]; `lane_of` (S,) int index into `keys`
    strip_a/strip_b    (N, 2) the two long edges of the continuous-marking strips, sampled like the lanes;
                  `strip_of` (N,) strip number (a strip is one side line of one lane)
    dashes        (D, 4, 2) dash quads, `dash_center` (D, 2)
    """

    keys: list[LaneKey]
    center: np.ndarray
    left: np.ndarray
    right: np.ndarray
    lane_of: np.ndarray
    strip_a: np.ndarray
    strip_b: np.ndarray
    strip_of: np.ndarray
    dashes: np.ndarray
    dash_center: np.ndarray

    @staticmethod
    def from_network(network: RoadNetwork) -> RoadMap:
        keys: list[LaneKey] = []
        center, left, right, lane_of, strip_a, strip_b, dashes = [], [], [], [], [], [], []
        strip_of: list[np.ndarray] = []
        for _from, tos in network.graph.items():
            for _to, lanes in tos.items():
                for i, lane in enumerate(lanes):
                    li = len(keys)
                    keys.append((_from, _to, i))
                    n = max(2, math.ceil(lane.length / SAMPLE_STEP) + 1)
                    s = np.linspace(0.0, lane.length, n)
                    w = np.array([lane.width_at(float(v)) for v in s])
                    center.append(_lane_points(lane, s, 0.0))
                    # highway-env side 0 is lateral -w/2 (left after the mirror), side 1 is +w/2 (right)
                    left.append(_lane_points(lane, s, -w / 2))
                    right.append(_lane_points(lane, s, w / 2))
                    lane_of.append(np.full(n, li))
                    for side in (0, 1):
                        kind = lane.line_types[side]
                        lat = (side - 0.5) * w
                        if kind in (LineType.CONTINUOUS, LineType.CONTINUOUS_LINE):
                            strip_a.append(_lane_points(lane, s, lat - MARKING_WIDTH / 2))
                            strip_b.append(_lane_points(lane, s, lat + MARKING_WIDTH / 2))
                            strip_of.append(np.full(n, len(strip_of)))
                        elif kind == LineType.STRIPED:
                            for s0 in np.arange(0.0, lane.length - 0.5, DASH_PERIOD):
                                ss = np.array([s0, min(s0 + DASH_LENGTH, lane.length)])
                                lat0 = (side - 0.5) * lane.width_at(float(s0))
                                a = _lane_points(lane, ss, lat0 - MARKING_WIDTH / 2)
                                b = _lane_points(lane, ss, lat0 + MARKING_WIDTH / 2)
                                dashes.append(np.concatenate([a, b[::-1]]))
        dash_arr = np.array(dashes, np.float64).reshape(-1, 4, 2)
        return RoadMap(
            keys,
            np.concatenate(center),
            np.concatenate(left),
            np.concatenate(right),
            np.concatenate(lane_of),
            np.concatenate(strip_a) if strip_a else np.zeros((0, 2)),
            np.concatenate(strip_b) if strip_b else np.zeros((0, 2)),
            np.concatenate(strip_of) if strip_of else np.zeros(0, int),
            dash_arr,
            dash_arr.mean(axis=1) if len(dash_arr) else np.zeros((0, 2)),
        )

    def lane_slice(self, key: LaneKey) -> slice:
        """Sample range of lane `key` in the concatenated arrays."""
        li = self.keys.index(key)
        lo, hi = np.searchsorted(self.lane_of, [li, li + 1])
        return slice(int(lo), int(hi))

    def strip(self, key: LaneKey) -> np.ndarray:
        """(2P, 2) outline of lane `key`'s surface strip: its left edge, then its right edge reversed."""
        sl = self.lane_slice(key)
        return np.concatenate([self.left[sl], self.right[sl][::-1]])

    def crop(
        self, pose: np.ndarray, radius: float, min_x: float = -math.inf
    ) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Lane pieces near `pose` (x, y, yaw), in its ego frame: (lane index, centreline (P, 2),
        surface polygon (2P, 2), and marking polygons), keeping samples within `radius` [m] and with
        ego x ≥ `min_x` (one sample of margin is kept on both ends of every run)."""
        lanes, centers, polys = [], [], []
        for li, (c_loc, l_loc, r_loc) in _pieces(
            self.center, self.lane_of, (self.left, self.right), pose, radius, min_x
        ):
            lanes.append(li)
            centers.append(c_loc)
            polys.append(np.concatenate([l_loc, r_loc[::-1]]))
        markings = [
            np.concatenate([a, b[::-1]])
            for _, (a, b) in _pieces(self.strip_a, self.strip_of, (self.strip_b,), pose, radius, min_x)
        ]
        if len(self.dash_center):
            dd = np.hypot(self.dash_center[:, 0] - pose[0], self.dash_center[:, 1] - pose[1])
            quads = self.dashes[dd < radius]
            if len(quads):
                local = world_to_ego(quads.reshape(-1, 2), pose).reshape(-1, 4, 2)
                markings.extend(local[local[:, :, 0].max(axis=1) >= min_x])
        return lanes, centers, polys, markings


def _pieces(
    pts: np.ndarray,
    owner: np.ndarray,
    others: tuple[np.ndarray, ...],
    pose: np.ndarray,
    radius: float,
    min_x: float,
) -> list[tuple[int, tuple[np.ndarray, ...]]]:
    """Contiguous runs (≥ 2 samples, one owner each) of the samples `pts` (N, 2) within `radius` [m] of
    `pose` and with ego x ≥ `min_x`, widened by one sample on both ends; returns per run its owner and
    the run's samples of `pts` and of each array in `others` (all (N, 2)), in the ego frame of `pose`."""
    d = np.hypot(pts[:, 0] - pose[0], pts[:, 1] - pose[1])
    mask = d < radius
    if min_x > -math.inf:
        c, s = math.cos(pose[2]), math.sin(pose[2])
        mask &= c * (pts[:, 0] - pose[0]) + s * (pts[:, 1] - pose[1]) >= min_x
    mask |= np.roll(mask, 1) | np.roll(mask, -1)  # margin so pieces reach the crop border
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return []
    breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(owner[idx]) != 0)) + 1
    local = [world_to_ego(a[idx], pose) for a in (pts, *others)]
    out = []
    for lo, hi in zip([0, *breaks.tolist()], [*breaks.tolist(), len(idx)]):
        if hi - lo >= 2:
            out.append((int(owner[idx[lo]]), tuple(arr[lo:hi] for arr in local)))
    return out
