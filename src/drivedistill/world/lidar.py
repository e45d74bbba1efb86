"""LiDAR-like BEV sensor: beams ray-cast from a roof-mounted sensor, splatted into a height histogram.

What it sees (and what it does not): every beam returns the first surface it meets — a vehicle box
(`VEHICLE_HEIGHT` tall), the kerb/barrier along the outer edge of the road surface (`KERB_HEIGHT`), a
roadside post (`POST_HEIGHT`, every `POST_SPACING` metres along the kerb) — or the ground. Near objects
occlude far ones per beam (a low kerb hides nothing a high beam passes over). There are no class
labels, no lane markings, no lane graph, no drivable-area fill: ground returns are removed (as a
LiDAR pipeline's ground segmentation would), so empty road and empty verge both read zero.

Geometry: the sensor sits at the ego box centre, `LidarConfig.mount_height` metres above the ground.
Beams: `num_azimuth` directions over 360° × `elevations_deg` (elevation angles, negative = down),
range ≤ `max_range`. Optional range noise (Gaussian, `range_noise` [m]) and beam dropout
(`dropout` probability) use the caller's numpy generator.

Raster (what students get in `AgentInput.bev`): (H, W, 2) uint8 in the ego frame with the layout of
`world/bev.py` (x forward = up, y left = left, `resolution` m/px, ego at the centre); channel 0 counts
returns with height in [`GROUND_CUT`, `SPLIT_HEIGHT`) m, channel 1 returns in [`SPLIT_HEIGHT`, ∞) — the
two-bin point histogram of TransFuser — each clipped at `HIST_MAX` returns per cell and scaled to 0..255.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivedistill.config import check
from drivedistill.world.bev import BevConfig, box_polygon

LIDAR_CHANNELS = ("low", "high")  # [GROUND_CUT, SPLIT_HEIGHT) m, [SPLIT_HEIGHT, inf) m above ground
GROUND_CUT = 0.2  # [m] returns below this height are ground, removed
SPLIT_HEIGHT = 1.0  # [m]
HIST_MAX = 5  # returns per cell that saturate a channel (TransFuser's hist_max_per_pixel)
VEHICLE_HEIGHT = 1.6  # [m]
KERB_HEIGHT = 0.5  # [m] barrier/kerb along the outer edge of the road surface
POST_HEIGHT = 1.2  # [m]
POST_SIZE = 0.3  # [m] square posts
POST_SPACING = 20.0  # [m] along the kerb
POST_OFFSET = 1.0  # [m] outside the kerb


@dataclass
class LidarConfig:
    """Beam pattern and noise of the LiDAR. Angles in degrees, distances in metres."""

    num_azimuth: int = field(default=360, metadata=check(ge=16, le=4096))
    elevations_deg: list[float] = field(
        default_factory=lambda: [-16.0, -11.0, -8.0, -6.0, -4.5, -3.5, -2.6, -1.9, -1.3, -0.8, -0.4, 0.0],
        metadata=check(ge=-60, le=30),
    )  # dense near the horizon, as a driving LiDAR's channels are
    mount_height: float = field(default=1.8, metadata=check(ge=0.5, le=5))  # [m]
    max_range: float = field(default=60.0, metadata=check(ge=5, le=300))  # [m]
    # [m] std of Gaussian range noise (0 = none)
    range_noise: float = field(default=0.03, metadata=check(ge=0, le=1))
    # probability that a beam returns nothing
    dropout: float = field(default=0.05, metadata=check(ge=0, lt=1))

    def __post_init__(self) -> None:
        if not 16 <= self.num_azimuth <= 4096:
            raise ValueError(f"LidarConfig.num_azimuth: expected 16..4096 beams, got {self.num_azimuth}")
        if not self.elevations_deg or any(not -60 <= e <= 30 for e in self.elevations_deg):
            raise ValueError(
                f"LidarConfig.elevations_deg: give 1+ angles in [-60, 30], got {self.elevations_deg}"
            )
        if not 0.5 <= self.mount_height <= 5.0:
            raise ValueError(f"LidarConfig.mount_height: expected 0.5..5 m, got {self.mount_height}")
        if not 5.0 <= self.max_range <= 300.0:
            raise ValueError(f"LidarConfig.max_range: expected 5..300 m, got {self.max_range}")
        if not 0.0 <= self.range_noise <= 1.0:
            raise ValueError(f"LidarConfig.range_noise: expected 0..1 m, got {self.range_noise}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LidarConfig.dropout: expected a probability in [0, 1), got {self.dropout}")


@dataclass
class Obstacles:
    """Vertical prisms the beams can hit, as wall segments: a (S, 2) → b (S, 2) in the sensor's frame
    [m], each with its top height (S,) [m] above the ground (bottoms are on the ground)."""

    a: np.ndarray
    b: np.ndarray
    height: np.ndarray

    @staticmethod
    def empty() -> Obstacles:
        return Obstacles(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))

    def __add__(self, other: Obstacles) -> Obstacles:
        return Obstacles(
            np.concatenate([self.a, other.a]),
            np.concatenate([self.b, other.b]),
            np.concatenate([self.height, other.height]),
        )


def polygon_walls(polys: list[np.ndarray], height: float) -> Obstacles:
    """Closed polygons (each (K, 2), ego frame) → their edges as walls of `height` [m]."""
    if not polys:
        return Obstacles.empty()
    a = np.concatenate(polys)
    b = np.concatenate([np.roll(p, -1, axis=0) for p in polys])
    return Obstacles(a, b, np.full(len(a), float(height)))


def box_walls(boxes: np.ndarray, height: float = VEHICLE_HEIGHT) -> Obstacles:
    """(A, ≥5) boxes x, y, yaw, length, width (ego frame) → their four sides as walls."""
    return polygon_walls([box_polygon(b) for b in boxes], height)


def ray_cast(obstacles: Obstacles, cfg: LidarConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """(N, 3) returns x, y, z [m] (ego frame, z above the ground) of every beam that hits an obstacle,
    nearest first per beam; beams reaching the ground first (or nothing within range) return no point
    (ground removal). `rng` draws range noise and dropout; None = noise-free."""
    az = np.linspace(-math.pi, math.pi, cfg.num_azimuth, endpoint=False)
    d = np.stack([np.cos(az), np.sin(az)], 1)  # (R, 2)
    if len(obstacles.a) == 0:
        return np.zeros((0, 3))
    # ray p = t·d (t ≥ 0) against segment q = a + u·(b − a), u ∈ [0, 1]
    a, e = obstacles.a, obstacles.b - obstacles.a  # (S, 2)
    denom = d[:, None, 0] * e[None, :, 1] - d[:, None, 1] * e[None, :, 0]  # (R, S) cross(d, e)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (
            a[None, :, 0] * e[None, :, 1] - a[None, :, 1] * e[None, :, 0]
        ) / denom  # cross(a, e) / cross(d, e)
        u = (
            a[None, :, 0] * d[:, None, 1] - a[None, :, 1] * d[:, None, 0]
        ) / denom  # cross(a, d) / cross(d, e)
    hit = (np.abs(denom) > 1e-12) & (t > 0.05) & (u >= 0.0) & (u <= 1.0) & (t <= cfg.max_range)
    dist = np.where(hit, t, np.inf)  # (R, S) horizontal range of each wall along each azimuth
    tan_el = np.tan(np.radians(np.asarray(cfg.elevations_deg, np.float64)))  # (E,)
    with np.errstate(divide="ignore"):
        ground = np.where(tan_el < 0, cfg.mount_height / -tan_el, np.inf)  # (E,) range where beams hit ground
    near = np.isfinite(dist)
    r_i, s_i = np.nonzero(near)  # only (ray, wall) pairs that intersect: few of R × S
    dd = dist[r_i, s_i]
    z = cfg.mount_height + dd[None] * tan_el[:, None]  # (E, K) beam height where it meets the wall
    ok = (z >= 0.0) & (z <= obstacles.height[s_i][None]) & (dd[None] < ground[:, None])
    rng_first = np.full((len(tan_el), cfg.num_azimuth), np.inf)
    np.minimum.at(rng_first, (np.nonzero(ok)[0], r_i[np.nonzero(ok)[1]]), dd[np.nonzero(ok)[1]])
    e_idx, r_idx = np.nonzero(np.isfinite(rng_first))
    r = rng_first[e_idx, r_idx]
    if rng is not None and cfg.dropout > 0:
        keep = rng.uniform(size=len(r)) >= cfg.dropout
        e_idx, r_idx, r = e_idx[keep], r_idx[keep], r[keep]
    if rng is not None and cfg.range_noise > 0:
        r = r + rng.normal(0.0, cfg.range_noise, size=len(r))
    zz = cfg.mount_height + r * tan_el[e_idx]
    return np.stack([r * d[r_idx, 0], r * d[r_idx, 1], zz], 1)


def splat(points: np.ndarray, cfg: BevConfig) -> np.ndarray:
    """(N, 3) returns x, y, z (ego frame) → (H, W, 2) uint8 height histogram (see module docstring)."""
    out = np.zeros((len(LIDAR_CHANNELS), cfg.height, cfg.width), np.float32)
    if len(points):
        col = np.floor(cfg.width / 2 - points[:, 1] / cfg.resolution).astype(np.int64)
        row = np.floor(cfg.height / 2 - points[:, 0] / cfg.resolution).astype(np.int64)
        ch = np.where(points[:, 2] >= SPLIT_HEIGHT, 1, 0)
        inside = (
            (col >= 0) & (col < cfg.width) & (row >= 0) & (row < cfg.height) & (points[:, 2] >= GROUND_CUT)
        )
        np.add.at(out, (ch[inside], row[inside], col[inside]), 1.0)
    hist = np.minimum(out, HIST_MAX) * (255.0 / HIST_MAX)
    return np.ascontiguousarray(np.round(hist).astype(np.uint8).transpose(1, 2, 0))


def render_lidar(
    obstacles: Obstacles, bev: BevConfig, cfg: LidarConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Ray-cast `obstacles` (ego frame) and splat the returns: (H, W, 2) uint8 (module docstring)."""
    return splat(ray_cast(obstacles, cfg, rng), bev)


def lidar_rgb(raster: np.ndarray) -> np.ndarray:
    """(H, W, 2) LiDAR histogram → (H, W, 3) uint8 picture for reports and GIFs: low returns in orange,
    high returns in cyan, on black."""
    low, high = (raster[..., i].astype(np.float32) / 255.0 for i in range(2))
    rgb = low[..., None] * np.array([255, 150, 40], np.float32) + high[..., None] * np.array([60, 220, 255])
    return np.clip(rgb, 0, 255).astype(np.uint8)


@dataclass
class RoadsideWorld:
    """Static scenery of one road network in the world frame: kerb walls along the outer edge of the road
    surface and the posts standing outside it. Built once per network (`roadside(scenario)`)."""

    kerb_a: np.ndarray
    kerb_b: np.ndarray
    posts: np.ndarray  # (P, 2) post centres [m]

    def crop(self, pose: np.ndarray, radius: float) -> Obstacles:
        """Walls within `radius` [m] of `pose` (x, y, yaw), in its ego frame."""
        from drivedistill.world.roadmap import world_to_ego

        mid = 0.5 * (self.kerb_a + self.kerb_b)
        near = np.hypot(mid[:, 0] - pose[0], mid[:, 1] - pose[1]) < radius
        kerb = Obstacles(
            world_to_ego(self.kerb_a[near], pose),
            world_to_ego(self.kerb_b[near], pose),
            np.full(int(near.sum()), KERB_HEIGHT),
        )
        pn = self.posts[np.hypot(self.posts[:, 0] - pose[0], self.posts[:, 1] - pose[1]) < radius]
        if not len(pn):
            return kerb
        local = world_to_ego(pn, pose)
        boxes = np.zeros((len(local), 5))
        boxes[:, :2], boxes[:, 3:] = local, POST_SIZE
        return kerb + box_walls(boxes, POST_HEIGHT)


@functools.cache
def roadside(scenario: str) -> RoadsideWorld:
    """The kerbs and posts of `scenario`'s road network (the boundary of its road surface: lanes and
    junction fillets, world/surface.py)."""
    import shapely

    from drivedistill.world.surface import surface

    road = surface(scenario)
    a_list, b_list, posts = [], [], []
    for line in _boundary_lines(road):
        # ≤ 2 m pieces: `crop` keeps walls by their midpoint (a straight kerb is one long edge otherwise)
        xy = np.asarray(shapely.segmentize(line, 2.0).coords, np.float64)
        a_list.append(xy[:-1])
        b_list.append(xy[1:])
        length = line.length
        for s in np.arange(POST_SPACING / 2, length, POST_SPACING):
            p = np.asarray(line.interpolate(s).coords[0])
            q = np.asarray(line.interpolate(min(s + 0.5, length)).coords[0])
            tangent = (q - p) / max(float(np.hypot(*(q - p))), 1e-6)
            normal = np.array([tangent[1], -tangent[0]])  # right of the boundary's direction
            cand = p + POST_OFFSET * normal
            if road.contains(shapely.Point(*cand)):
                cand = p - POST_OFFSET * normal
            if not road.buffer(POST_OFFSET * 0.5).contains(shapely.Point(*cand)):
                posts.append(cand)
    return RoadsideWorld(
        np.concatenate(a_list) if a_list else np.zeros((0, 2)),
        np.concatenate(b_list) if b_list else np.zeros((0, 2)),
        np.array(posts, np.float64).reshape(-1, 2),
    )


def _boundary_lines(surface: Any) -> list[Any]:
    """Exterior and interior rings of a (Multi)Polygon as LineStrings."""
    import shapely

    geoms = getattr(surface, "geoms", [surface])
    lines = []
    for g in geoms:
        lines.append(shapely.LineString(g.exterior.coords))
        lines.extend(shapely.LineString(r.coords) for r in g.interiors)
    return lines
