"""The LiDAR BEV sensor (world/lidar.py): returns where the boxes are, none where nothing is, occlusion."""

from __future__ import annotations

import numpy as np
import pytest

from drivedistill.world.bev import BevConfig
from drivedistill.world.lidar import (
    LIDAR_CHANNELS,
    LidarConfig,
    Obstacles,
    box_walls,
    ray_cast,
    render_lidar,
    splat,
)

BEV = BevConfig(height=80, width=80, resolution=1.0)  # ±40 m
NOISE_FREE = LidarConfig(range_noise=0.0, dropout=0.0)


def _cells(raster: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """The raster's (rows, cols, C) block covering ego x in [x0, x1], y in [y0, y1] (metres)."""
    r0, r1 = int(BEV.height / 2 - x1 / BEV.resolution), int(BEV.height / 2 - x0 / BEV.resolution)
    c0, c1 = int(BEV.width / 2 - y1 / BEV.resolution), int(BEV.width / 2 - y0 / BEV.resolution)
    return raster[r0 : r1 + 1, c0 : c1 + 1]


def test_returns_on_the_box_and_nowhere_else() -> None:
    car = np.array([[15.0, 6.0, 0.0, 4.5, 2.0]])  # ahead-left, unoccluded
    raster = render_lidar(box_walls(car), BEV, NOISE_FREE)
    assert raster.shape == (80, 80, len(LIDAR_CHANNELS)) and raster.dtype == np.uint8
    on_box = _cells(raster, 12.0, 18.0, 4.5, 7.5)
    assert on_box.sum() > 0 and on_box[..., 0].sum() > 0 and on_box[..., 1].sum() > 0  # low and high bins
    mask = np.zeros(raster.shape[:2], bool)
    mask[int(40 - 18.5) : int(40 - 11.5) + 1, int(40 - 8.0) : int(40 - 4.0) + 1] = True
    assert raster[~mask].sum() == 0, "returns away from the only object (ground must be removed)"


def test_empty_world_has_no_returns() -> None:
    assert render_lidar(Obstacles.empty(), BEV, LidarConfig()).sum() == 0


def test_occluded_box_gets_no_returns() -> None:
    truck = box_walls(np.array([[12.0, 0.0, 0.0, 8.0, 2.6]]), height=3.5)  # taller than the sensor
    hidden = np.array([[30.0, 0.0, 0.0, 4.5, 2.0]])  # straight behind it, inside its shadow
    visible = np.array([[30.0, 10.0, 0.0, 4.5, 2.0]])  # same range, off to the side
    raster = render_lidar(truck + box_walls(hidden) + box_walls(visible), BEV, NOISE_FREE)
    assert _cells(raster, 8.0, 16.0, -1.5, 1.5).sum() > 0
    assert _cells(raster, 27.5, 32.5, -1.2, 1.2).sum() == 0, "a box behind a taller one was seen"
    assert _cells(raster, 27.5, 32.5, 8.5, 11.5).sum() > 0
    # without the occluder the hidden box is seen
    assert _cells(render_lidar(box_walls(hidden), BEV, NOISE_FREE), 27.5, 32.5, -1.2, 1.2).sum() > 0


def test_low_kerb_is_seen_low_and_does_not_hide_a_car() -> None:
    kerb = Obstacles(np.array([[5.0, -3.0]]), np.array([[5.0, 3.0]]), np.array([0.5]))  # 6 m wall across
    car = box_walls(np.array([[25.0, 0.0, 0.0, 4.5, 2.0]]))
    raster = render_lidar(kerb + car, BEV, NOISE_FREE)
    assert _cells(raster, 4.0, 6.0, -3.0, 3.0)[..., 0].sum() > 0
    assert _cells(raster, 4.0, 6.0, -3.0, 3.0)[..., 1].sum() == 0  # 0.5 m tall: only the low bin
    assert _cells(raster, 22.0, 28.0, -1.5, 1.5).sum() > 0  # beams pass over the kerb


def test_splat_geometry_and_saturation() -> None:
    pts = np.array([[10.0, 5.0, 1.2], [10.1, 5.1, 0.5], [0.0, 0.0, 0.05]])  # high, low, ground
    r = splat(pts, BEV)
    # row = floor(H/2 - x / res), col = floor(W/2 - y / res); one return = 255 / HIST_MAX
    assert r[30, 35, 1] == 51 and r[30, 35, 0] == 0
    assert r[29, 34, 0] == 51 and r[29, 34, 1] == 0
    assert r.astype(int).sum() == 102, "ground return (z < GROUND_CUT) was kept"
    many = np.tile([[3.0, 3.0, 1.5]], (20, 1))
    assert splat(many, BEV).max() == 255  # HIST_MAX returns saturate


def test_noise_and_dropout_are_seeded() -> None:
    car = box_walls(np.array([[15.0, 0.0, 0.0, 4.5, 2.0]]))
    cfg = LidarConfig(range_noise=0.05, dropout=0.3)
    a = ray_cast(car, cfg, np.random.default_rng(1))
    b = ray_cast(car, cfg, np.random.default_rng(1))
    clean = ray_cast(car, NOISE_FREE)
    assert np.array_equal(a, b)
    assert 0.5 * len(clean) < len(a) < 0.9 * len(clean)  # ~30 % dropped


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="LidarConfig.dropout"):
        LidarConfig(dropout=1.0)
    with pytest.raises(ValueError, match="LidarConfig.num_azimuth"):
        LidarConfig(num_azimuth=4)
