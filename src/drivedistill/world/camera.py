"""Front camera: pinhole projection of the road surface, lane markings and vehicle boxes (numpy + PIL).

Frames. Ego frame: origin at the ego box centre on the ground, x forward, y left, z up [m].
Camera frame: origin at the mount point (`mount_x` ahead of the box centre, `mount_height` above the
ground), x right, y down, z along the optical axis, which is pitched `pitch_deg` below the horizon.
Pixels: u to the right, v down, (0, 0) the top-left corner of the top-left pixel.

The renderer draws, back to front: sky and grass split at the horizon, lane surfaces (asphalt), lane
markings as thin ground quads (continuous lines and 3 m dashes), then vehicles as 1.5 m high cuboids
sorted far to near with back faces culled; a braking vehicle's rear face shows red brake lights. Ground
polygons are clipped against the near plane in 3-D before projection, so a road curving behind the
camera or a lane change renders with correct perspective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from drivedistill.config import check

SKY = (150, 190, 230)
GRASS = (70, 110, 60)
ASPHALT = (95, 95, 100)
MARKING = (235, 235, 235)
VEHICLE_HEIGHT = 1.5  # [m] height of every rendered vehicle box
BRAKE_LIGHT = (255, 30, 30)


@dataclass
class CameraConfig:
    """Pinhole front camera. `fx`/`fy`/`cx`/`cy` default (0 = derive) to a square-pixel camera with
    horizontal field of view `fov_deg` and the principal point at the image centre."""

    height: int = field(default=128, metadata=check(ge=16))  # [px]
    width: int = field(default=256, metadata=check(ge=16))  # [px]
    # horizontal field of view [deg]; used when fx == 0
    fov_deg: float = field(default=90.0, metadata=check(ge=10, le=170))
    fx: float = field(default=0.0, metadata=check(ge=0))  # [px]; 0 = from fov_deg
    fy: float = field(default=0.0, metadata=check(ge=0))  # [px]; 0 = fx
    cx: float = field(default=0.0, metadata=check(ge=0))  # [px]; 0 = width / 2
    cy: float = field(default=0.0, metadata=check(ge=0))  # [px]; 0 = height / 2
    mount_x: float = 0.5  # [m] ahead of the ego box centre
    mount_height: float = field(default=1.5, metadata=check(gt=0))  # [m] above the ground
    # [deg] optical axis below the horizon (positive = looking down)
    pitch_deg: float = field(default=3.0, metadata=check(ge=-30, le=45))
    max_range: float = field(default=120.0, metadata=check(gt=0))  # [m] nothing farther is drawn
    near: float = field(default=0.3, metadata=check(gt=0))  # [m] near clipping plane

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(
                f"CameraConfig.height/width: need at least 16 px, got {self.height}x{self.width}"
            )
        if not 10.0 <= self.fov_deg <= 170.0:
            raise ValueError(f"CameraConfig.fov_deg: must be in [10, 170] degrees, got {self.fov_deg}")
        if self.fx < 0 or self.fy < 0:
            raise ValueError("CameraConfig.fx/fy: must be > 0, or 0 to derive them from fov_deg")
        if self.mount_height <= 0:
            raise ValueError(f"CameraConfig.mount_height: must be > 0 m, got {self.mount_height}")
        if not -30.0 <= self.pitch_deg <= 45.0:
            raise ValueError(f"CameraConfig.pitch_deg: expected -30..45 degrees, got {self.pitch_deg}")
        if self.max_range <= self.near or self.near <= 0:
            raise ValueError("CameraConfig.near/max_range: need 0 < near < max_range")

    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole matrix K [px] (cached: configs are not mutated after construction)."""
        cached = self.__dict__.get("_k")
        if cached is not None:
            return cached
        self.__dict__["_k"] = self._intrinsics()
        return self.__dict__["_k"]

    def _intrinsics(self) -> np.ndarray:
        fx = self.fx or (self.width / 2) / math.tan(math.radians(self.fov_deg) / 2)
        fy = self.fy or fx
        cx = self.cx or self.width / 2
        cy = self.cy or self.height / 2
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)

    def rotation(self) -> np.ndarray:
        """(3, 3) rows = camera x (right), y (down), z (optical axis) expressed in the ego frame (cached)."""
        cached = self.__dict__.get("_r")
        if cached is None:
            cached = self.__dict__["_r"] = self._rotation()
        return cached

    def _rotation(self) -> np.ndarray:
        p = math.radians(self.pitch_deg)
        z = np.array([math.cos(p), 0.0, -math.sin(p)])
        x = np.array([0.0, -1.0, 0.0])
        y = np.cross(z, x)
        return np.stack([x, y, z])

    def origin(self) -> np.ndarray:
        """(3,) camera centre in the ego frame [m]."""
        return np.array([self.mount_x, 0.0, self.mount_height])


def ego_to_camera(points_ego: np.ndarray, cam: CameraConfig) -> np.ndarray:
    """(N, 3) ego-frame points [m] → (N, 3) camera-frame points [m] (x right, y down, z forward)."""
    return (np.asarray(points_ego, np.float64) - cam.origin()) @ cam.rotation().T


def project_points(points_ego: np.ndarray, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Project ego-frame points into the image.

    points_ego  (N, 3) x forward, y left, z up [m] in the current ego frame
    returns     uv (N, 2) float pixel coordinates (u right, v down) and in_front (N,) bool — True where the
                point lies beyond the near plane (uv of other points is meaningless). Points outside the
                image bounds keep their (out-of-range) uv.
    """
    pc = ego_to_camera(points_ego, cam)
    k = cam.intrinsics()
    in_front = pc[:, 2] > cam.near
    z = np.where(in_front, pc[:, 2], 1.0)
    uv = np.stack([k[0, 0] * pc[:, 0] / z + k[0, 2], k[1, 1] * pc[:, 1] / z + k[1, 2]], axis=1)
    return uv, in_front


def horizon_row(cam: CameraConfig) -> float:
    """Image row [px] of the horizon (ground points at infinity straight ahead)."""
    k = cam.intrinsics()
    return float(k[1, 2] - k[1, 1] * math.tan(math.radians(cam.pitch_deg)))


def clip_near(poly_cam: np.ndarray, near: float) -> np.ndarray:
    """Clip a planar polygon (K, 3) in camera coordinates to z > near (Sutherland–Hodgman, one plane)."""
    inside = poly_cam[:, 2] > near
    if inside.all():
        return poly_cam
    if not inside.any():
        return poly_cam[:0]
    nxt = np.roll(poly_cam, -1, axis=0)
    nxt_inside = np.roll(inside, -1)
    crossing = inside != nxt_inside
    t = (near - poly_cam[:, 2]) / np.where(crossing, nxt[:, 2] - poly_cam[:, 2], 1.0)
    cross_pts = poly_cam + t[:, None] * (nxt - poly_cam)
    stacked = np.stack([poly_cam, cross_pts], axis=1).reshape(-1, 3)
    keep = np.stack([inside, crossing], axis=1).reshape(-1)
    return stacked[keep]


@dataclass
class CameraScene:
    """What the camera sees at one instant, in the current ego frame [m].

    ground_polys  road-surface polygons, each (K, 2) on z = 0
    marking_polys lane-marking polygons, each (K, 2) on z = 0 (thin quads / strips)
    boxes         (A, 5) x, y, yaw, length, width of vehicle boxes (ego excluded)
    colors        (A, 3) uint8 body colour per box
    braking       (A,) bool, brake lights on
    """

    ground_polys: list[np.ndarray]
    marking_polys: list[np.ndarray]
    boxes: np.ndarray
    colors: np.ndarray
    braking: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def _uv(pc: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(N, 3) camera points with z > 0 → (N, 2) pixel coordinates, clipped to ±1e4 px."""
    return np.clip(
        np.stack([k[0, 0] * pc[:, 0] / pc[:, 2] + k[0, 2], k[1, 1] * pc[:, 1] / pc[:, 2] + k[1, 2]], 1),
        -1e4,
        1e4,
    )


def _draw_ground_batch(
    draw: ImageDraw.ImageDraw, polys: list[np.ndarray], cam: CameraConfig, fill: tuple[int, int, int]
) -> None:
    """Draw ground polygons (each (K, 2), z = 0): all transformed, clipped at the near plane (the
    Sutherland–Hodgman step of `clip_near`, run on every edge of every polygon at once), projected and
    tested for visibility together; only the PIL calls remain per polygon."""
    if not polys:
        return
    lengths = np.array([len(p) for p in polys])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pts = np.concatenate(polys)
    pc = ego_to_camera(np.concatenate([pts, np.zeros((len(pts), 1))], axis=1), cam)
    nxt = np.arange(1, len(pc) + 1)
    nxt[starts + lengths - 1] = starts  # each polygon's last vertex connects back to its first
    inside = pc[:, 2] > cam.near
    crossing = inside != inside[nxt]
    dz = np.where(crossing, pc[nxt, 2] - pc[:, 2], 1.0)
    cross_pts = pc + ((cam.near - pc[:, 2]) / dz)[:, None] * (pc[nxt] - pc)
    keep = np.stack([inside, crossing], axis=1)  # vertex if inside, then the edge's crossing point
    clipped = np.stack([pc, cross_pts], axis=1)[keep]
    counts = np.add.reduceat(keep.sum(axis=1), starts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if not len(clipped):
        return
    uv = _uv(clipped, cam.intrinsics())
    lo = np.minimum(first, len(uv) - 1)  # reduceat needs valid indices; empty polygons are skipped below
    u_min, u_max = np.minimum.reduceat(uv[:, 0], lo), np.maximum.reduceat(uv[:, 0], lo)
    v_min, v_max = np.minimum.reduceat(uv[:, 1], lo), np.maximum.reduceat(uv[:, 1], lo)
    seen = (counts >= 3) & (u_max >= 0) & (u_min <= cam.width) & (v_max >= 0) & (v_min <= cam.height)
    flat = uv.ravel().tolist()
    for i in np.flatnonzero(seen).tolist():
        a, n = 2 * int(first[i]), 2 * int(counts[i])
        draw.polygon(flat[a : a + n], fill=fill, outline=fill)


FACES = np.array([[0, 1, 5, 4], [2, 3, 7, 6], [3, 0, 4, 7], [1, 2, 6, 5], [4, 5, 6, 7]])  # corner indices
FACE_SHADE = np.array([0.85, 0.75, 0.65, 0.65, 1.0])  # front, rear, left side, right side, roof
REAR = 1


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(A, 8, 3) corners of boxes (A, 5) x, y, yaw, length, width [m, m, rad, m, m]: the four ground
    corners front-left, front-right, rear-right, rear-left, then the same four at `VEHICLE_HEIGHT`."""
    c, s = np.cos(boxes[:, 2:3]), np.sin(boxes[:, 2:3])
    lx = np.array([1.0, 1.0, -1.0, -1.0]) * boxes[:, 3:4] / 2
    ly = np.array([1.0, -1.0, -1.0, 1.0]) * boxes[:, 4:5] / 2
    x, y = boxes[:, 0:1] + c * lx - s * ly, boxes[:, 1:2] + s * lx + c * ly
    ground = np.stack([x, y, np.zeros_like(x)], -1)
    return np.concatenate([ground, ground + np.array([0.0, 0.0, VEHICLE_HEIGHT])], axis=1)


def _draw_boxes(draw: ImageDraw.ImageDraw, scene: CameraScene, cam: CameraConfig) -> None:
    """Vehicle cuboids far to near, back faces culled, faces clipped at the near plane when needed."""
    boxes = scene.boxes
    origin = cam.origin()
    k = cam.intrinsics()
    keep = (boxes[:, 0] >= -boxes[:, 3]) & (np.hypot(boxes[:, 0], boxes[:, 1]) <= cam.max_range)
    order = np.argsort(-np.hypot(boxes[:, 0] - origin[0], boxes[:, 1]))
    order = order[keep[order]]
    if not len(order):
        return
    corners = box_corners(boxes[order])  # (A, 8, 3) ego frame
    quads = corners[:, FACES]  # (A, 5, 4, 3)
    c, s = np.cos(boxes[order, 2:3]), np.sin(boxes[order, 2:3])
    zero, one = np.zeros_like(c), np.ones_like(c)
    normals = np.stack(
        [
            np.concatenate(n, 1)
            for n in ((c, s, zero), (-c, -s, zero), (-s, c, zero), (s, -c, zero), (zero, zero, one))
        ],
        axis=1,
    )  # (A, 5, 3) outward normals
    visible = ((origin - quads.mean(axis=2)) * normals).sum(-1) > 0
    pc = (quads - origin) @ cam.rotation().T  # (A, 5, 4, 3) camera frame
    front = (pc[..., 2] > cam.near).all(-1)
    uv = _uv(np.where(front[..., None, None], pc, 1.0).reshape(-1, 3), k).reshape(*pc.shape[:3], 2)
    colors = scene.colors[order].astype(np.float64)
    fills = np.clip(colors[:, None, :] * FACE_SHADE[None, :, None], 0, 255).astype(int).tolist()
    braking = scene.braking[order] if len(scene.braking) else np.zeros(len(order), bool)
    for a, f in zip(*np.nonzero(visible)):
        if front[a, f]:
            pts = uv[a, f].ravel().tolist()
        else:
            clipped = clip_near(pc[a, f], cam.near)
            if len(clipped) < 3:
                continue
            pts = _uv(clipped, k).ravel().tolist()
        fill = tuple(fills[a][f])
        draw.polygon(pts, fill=fill, outline=fill)
        if f == REAR and braking[a]:
            _draw_brake_lights(draw, corners[a], cam)


def render_camera(scene: CameraScene, cam: CameraConfig) -> np.ndarray:
    """Render the front camera image (H, W, 3) uint8 RGB of `scene` (all inputs in the ego frame)."""
    img = Image.new("RGB", (cam.width, cam.height), GRASS)
    draw = ImageDraw.Draw(img)
    hz = horizon_row(cam)
    if hz > 0:
        draw.rectangle([0, 0, cam.width, min(hz, cam.height)], fill=SKY)
    _draw_ground_batch(draw, scene.ground_polys, cam, ASPHALT)
    _draw_ground_batch(draw, scene.marking_polys, cam, MARKING)
    if len(scene.boxes):
        _draw_boxes(draw, scene, cam)
    return np.asarray(img, dtype=np.uint8)


def _draw_brake_lights(draw: ImageDraw.ImageDraw, corners: np.ndarray, cam: CameraConfig) -> None:
    """Two red lamps on the rear face (corners 2, 3 at the bottom, 6, 7 at the top)."""
    for a, b in ((2, 3), (3, 2)):
        base = corners[a] + 0.22 * (corners[b] - corners[a])
        lamp = np.array([base, base + 0.15 * (corners[b] - corners[a])])
        quad = np.concatenate([lamp + np.array([0, 0, 0.7]), lamp[::-1] + np.array([0, 0, 1.0])])
        uv, ok = project_points(quad, cam)
        if ok.all():
            draw.polygon([(float(u), float(v)) for u, v in uv], fill=BRAKE_LIGHT, outline=BRAKE_LIGHT)
