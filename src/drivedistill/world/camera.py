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

    height: int = 128  # [px]
    width: int = 256  # [px]
    fov_deg: float = 90.0  # horizontal field of view [deg]; used when fx == 0
    fx: float = 0.0  # [px]; 0 = from fov_deg
    fy: float = 0.0  # [px]; 0 = fx
    cx: float = 0.0  # [px]; 0 = width / 2
    cy: float = 0.0  # [px]; 0 = height / 2
    mount_x: float = 0.5  # [m] ahead of the ego box centre
    mount_height: float = 1.5  # [m] above the ground
    pitch_deg: float = 3.0  # [deg] optical axis below the horizon (positive = looking down)
    max_range: float = 120.0  # [m] nothing farther is drawn
    near: float = 0.3  # [m] near clipping plane

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


def _draw_ground_batch(
    draw: ImageDraw.ImageDraw, polys: list[np.ndarray], cam: CameraConfig, fill: tuple[int, int, int]
) -> None:
    """Draw ground polygons (each (K, 2), z = 0): one transform for all, clipping only where needed."""
    if not polys:
        return
    lengths = [len(p) for p in polys]
    pts = np.concatenate(polys)
    pc = ego_to_camera(np.concatenate([pts, np.zeros((len(pts), 1))], axis=1), cam)
    k = cam.intrinsics()
    z = np.maximum(pc[:, 2], cam.near)
    uv_all = np.clip(
        np.stack([k[0, 0] * pc[:, 0] / z + k[0, 2], k[1, 1] * pc[:, 1] / z + k[1, 2]], 1), -1e4, 1e4
    )
    inside = pc[:, 2] > cam.near
    u_max, v_max = cam.width, cam.height
    for lo, n in zip(np.cumsum([0, *lengths[:-1]]), lengths):
        sl = slice(int(lo), int(lo + n))
        if inside[sl].all():
            uv = uv_all[sl]
        else:
            c = clip_near(pc[sl], cam.near)
            if len(c) < 3:
                continue
            uv = np.clip(
                np.stack([k[0, 0] * c[:, 0] / c[:, 2] + k[0, 2], k[1, 1] * c[:, 1] / c[:, 2] + k[1, 2]], 1),
                -1e4,
                1e4,
            )
        if uv[:, 0].max() < 0 or uv[:, 0].min() > u_max or uv[:, 1].max() < 0 or uv[:, 1].min() > v_max:
            continue
        draw.polygon(uv.ravel().tolist(), fill=fill, outline=fill)


def _box_faces(box: np.ndarray) -> tuple[np.ndarray, list[tuple[list[int], np.ndarray, float]]]:
    """Corners (8, 3) of a box and its faces: (corner indices, outward normal (3,), shade factor)."""
    x, y, yaw, length, width = (float(v) for v in box)
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64) * [length / 2, width / 2]
    xy = local @ np.array([[c, s], [-s, c]]) + [x, y]
    corners = np.concatenate([np.c_[xy, np.zeros(4)], np.c_[xy, np.full(4, VEHICLE_HEIGHT)]])
    fwd, left = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    faces = [
        ([0, 1, 5, 4], fwd, 0.85),  # front
        ([2, 3, 7, 6], -fwd, 0.75),  # rear
        ([3, 0, 4, 7], left, 0.65),  # left side
        ([1, 2, 6, 5], -left, 0.65),  # right side
        ([4, 5, 6, 7], np.array([0.0, 0.0, 1.0]), 1.0),  # roof
    ]
    return corners, faces


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
        origin = cam.origin()
        rot = cam.rotation()
        k = cam.intrinsics()
        order = np.argsort(-np.hypot(scene.boxes[:, 0] - origin[0], scene.boxes[:, 1]))
        for i in order:
            box = scene.boxes[i]
            if box[0] < -box[3] or math.hypot(box[0], box[1]) > cam.max_range:
                continue
            corners, faces = _box_faces(box)
            color = scene.colors[i].astype(np.float64)
            for idx, normal, shade in faces:
                quad = corners[idx]
                if float(np.dot(normal, origin - quad.mean(axis=0))) <= 0:
                    continue  # back face
                pc = clip_near((quad - origin) @ rot.T, cam.near)
                if len(pc) < 3:
                    continue
                uv = np.stack(
                    [k[0, 0] * pc[:, 0] / pc[:, 2] + k[0, 2], k[1, 1] * pc[:, 1] / pc[:, 2] + k[1, 2]], 1
                )
                uv = np.clip(uv, -1e4, 1e4)
                fill = tuple(int(v) for v in np.clip(color * shade, 0, 255))
                draw.polygon([(float(u), float(v)) for u, v in uv], fill=fill, outline=fill)
                if shade == 0.75 and len(scene.braking) and scene.braking[i]:
                    _draw_brake_lights(draw, corners, cam)
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
