"""Real LiDAR sweeps → the students' BEV: the same 2-channel height histogram as the world's sensor.

The world's LiDAR (world/lidar.py) returns points with z = height above a flat ground, ground returns
already removed, and `splat` bins them on the `BevConfig` grid: channel 0 heights in [GROUND_CUT,
SPLIT_HEIGHT), channel 1 in [SPLIT_HEIGHT, ∞), `HIST_MAX` returns per cell saturate. A real sweep needs two
steps before the same `splat`:

1. **Ego returns removed**: points inside the ego's footprint box (plus `EGO_MARGIN`) are the car's own
   roof and body; the world's sensor never sees its ego.
2. **Ground removal consistent with the world's bins** (`ground="local"`, real sweeps): heights are
   taken above the local ground, then `splat` drops heights below GROUND_CUT exactly as the world's
   histogram does. Per `GROUND_CELL` metre cell the lowest returns (`GROUND_PERCENTILE`) are the ground
   when they look like a surface — at least `GROUND_MIN_POINTS` returns, `GROUND_FLAT_FRACTION` of them
   within `GROUND_FLAT_BAND` above that percentile (a vertical face, a car's side, spreads its returns
   over its height) — and lie at most `GROUND_MAX` above the ego's ground plane (z = 0 of the nuScenes /
   AV2 ego frame; a car roof or bonnet seen from above is flat too, but higher). A cell without such a
   surface takes the lowest ground of its 3 × 3 neighbourhood (a car on the road: the road around it),
   else z = 0. This follows a raised pavement or a road falling away; a low wall top or planter below
   GROUND_MAX reads as ground (removed). `ground="flat"`: heights are z above the ego's ground plane, as
   the world's flat ground — for sweeps whose ground returns are already removed (the world's exported
   LiDAR, where a kerb-only cell would otherwise look like a surface).
"""

from __future__ import annotations

import numpy as np

from drivedistill.world.bev import BevConfig
from drivedistill.world.lidar import splat

EGO_MARGIN = 0.3  # [m] around the ego footprint
GROUND_MODES = ("local", "flat")
GROUND_CELL = 2.0  # [m] cell of the local ground estimate
GROUND_PERCENTILE = 5.0
GROUND_MIN_POINTS = 8
GROUND_FLAT_BAND = 0.15  # [m]
GROUND_FLAT_FRACTION = 0.3
GROUND_MAX = 0.6  # [m] above the ego's ground plane


def remove_ego_returns(points: np.ndarray, front: float, rear: float, width: float) -> np.ndarray:
    """Drop (N, 3) ego-frame points inside the ego footprint (x ∈ [-rear, front], |y| ≤ width / 2 around
    the frame's origin, each widened by EGO_MARGIN) [m]."""
    x, y = points[:, 0], points[:, 1]
    inside = (x >= -rear - EGO_MARGIN) & (x <= front + EGO_MARGIN) & (np.abs(y) <= width / 2 + EGO_MARGIN)
    return points[~inside]


def heights_above_ground(points: np.ndarray, mode: str = "local") -> np.ndarray:
    """(N, 3) ego-frame points → the same points with z replaced by the height above the ground (module
    docstring, step 2; `mode` "local" or "flat")."""
    if mode not in GROUND_MODES:
        raise ValueError(f"ground removal {mode!r}: use one of {list(GROUND_MODES)}")
    out = np.array(points, np.float64, copy=True)
    if mode == "flat" or not len(points):
        return out
    from scipy.ndimage import minimum_filter

    cell = np.floor(out[:, :2] / GROUND_CELL).astype(np.int64)
    lo = cell.min(0)
    cell -= lo
    shape = tuple(int(v) + 1 for v in cell.max(0))
    flat_index = np.ravel_multi_index((cell[:, 0], cell[:, 1]), shape)
    order = np.argsort(flat_index, kind="stable")
    keys, starts, counts = np.unique(flat_index[order], return_index=True, return_counts=True)
    ground = np.full(shape, np.inf)
    for key, start, count in zip(keys, starts, counts):
        if count < GROUND_MIN_POINTS:
            continue
        z = out[order[start : start + count], 2]
        low = np.percentile(z, GROUND_PERCENTILE)
        if low <= GROUND_MAX and np.mean(z <= low + GROUND_FLAT_BAND) >= GROUND_FLAT_FRACTION:
            ground.flat[key] = low
    neighbourhood = minimum_filter(ground, size=3, mode="constant", cval=np.inf)
    g = np.where(np.isfinite(ground), ground, neighbourhood).reshape(-1)[flat_index]
    out[:, 2] -= np.where(np.isfinite(g), g, 0.0)
    return out


def sweep_bev(
    points_ego: np.ndarray,
    cfg: BevConfig,
    ego_front: float,
    ego_rear: float,
    ego_width: float,
    ground: str = "local",
) -> np.ndarray:
    """(N, ≥3) sweep points in the ego frame (x forward, y left, z up, origin on the ground) → the world's
    (H, W, 2) uint8 height histogram on `cfg`'s grid (world/lidar.py `splat`), ego returns and ground
    removed (module docstring; `ground` "local" or "flat")."""
    pts = remove_ego_returns(np.asarray(points_ego, np.float64)[:, :3], ego_front, ego_rear, ego_width)
    return splat(heights_above_ground(pts, ground), cfg)
