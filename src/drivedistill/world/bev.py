"""Ego-centred BEV sensor raster: drivable area, lane markings and vehicles at the current time.

Layout: (H, W, 3) uint8 with values 0 / 255; channel 0 drivable area, 1 lane markings, 2 vehicles
(the ego itself is not drawn: like a LiDAR BEV, it is always at the centre). The ego box centre sits at
the image centre; x forward points up (row decreases), y left points left (column decreases), one pixel
is `resolution` metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from drivedistill.config import check

BEV_CHANNELS = ("drivable", "markings", "vehicles")


@dataclass
class BevConfig:
    """Raster size [px] and resolution [m/px]; the covered area is (height × width) · resolution."""

    height: int = field(default=128, metadata=check(ge=8))
    width: int = field(default=128, metadata=check(ge=8))
    resolution: float = field(default=0.5, metadata=check(ge=0.05, le=5))  # [m/px]

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"BevConfig.height/width: need at least 8 px, got {self.height}x{self.width}")
        if not 0.05 <= self.resolution <= 5.0:
            raise ValueError(f"BevConfig.resolution: expected 0.05..5 m/px, got {self.resolution}")

    @property
    def radius(self) -> float:
        """[m] distance from the centre to the farthest raster corner."""
        return 0.5 * math.hypot(self.height, self.width) * self.resolution


def ego_to_pixels(xy: np.ndarray, cfg: BevConfig) -> np.ndarray:
    """(N, 2) ego-frame x, y [m] → (N, 2) pixel (column, row) floats of the BEV raster."""
    col = cfg.width / 2 - xy[:, 1] / cfg.resolution
    row = cfg.height / 2 - xy[:, 0] / cfg.resolution
    return np.stack([col, row], axis=1)


def _draw_polys(draw: ImageDraw.ImageDraw, polys: list[np.ndarray], cfg: BevConfig) -> None:
    """Fill polygons (each (K, 2), ego frame [m]) with 255: one pixel transform for all of them."""
    if not polys:
        return
    flat = np.clip(ego_to_pixels(np.concatenate(polys), cfg), -1e4, 1e4).ravel().tolist()
    lo = 0
    for poly in polys:
        draw.polygon(flat[lo : lo + 2 * len(poly)], fill=255, outline=255)
        lo += 2 * len(poly)


def box_polygon(box: np.ndarray) -> np.ndarray:
    """(4, 2) corners of a box (x, y, yaw, length, width) [m, m, rad, m, m]."""
    x, y, yaw, length, width = (float(v) for v in box[:5])
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64) * [length / 2, width / 2]
    return local @ np.array([[c, s], [-s, c]]) + [x, y]


def render_bev(
    ground_polys: list[np.ndarray], marking_polys: list[np.ndarray], boxes: np.ndarray, cfg: BevConfig
) -> np.ndarray:
    """Rasterise polygons (each (K, 2), ego frame [m]) and boxes (A, 5) into an (H, W, 3) uint8 raster."""
    layers = []
    box_polys = [box_polygon(box) for box in boxes]
    for polys in (ground_polys, marking_polys, box_polys):
        img = Image.new("L", (cfg.width, cfg.height), 0)
        _draw_polys(ImageDraw.Draw(img), polys, cfg)
        layers.append(np.asarray(img, dtype=np.uint8))
    return np.stack(layers, axis=-1)
