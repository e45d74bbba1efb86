"""The image a VLM annotator sees: the front camera with the ego's future trajectory drawn as a red line.

The plan (ego frame, metres, z = 0 on the ground) is densified, projected with the world's pinhole model
(`drivedistill.world.camera.project_points`) and drawn over the camera image, optionally upscaled
first so that small world cameras (128×256) are legible to a VLM.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

from drivedistill.annotate.base import require_privileged
from drivedistill.types import Scene
from drivedistill.world.camera import CameraConfig, project_points

RED = (255, 0, 0)


def camera_for(image: np.ndarray, cam: CameraConfig | None = None) -> CameraConfig:
    """`cam` when given (its size must match the image), else the world's default camera at the image size."""
    h, w = image.shape[:2]
    if cam is None:
        return CameraConfig(height=h, width=w)
    if (cam.height, cam.width) != (h, w):
        raise ValueError(
            f"render: camera config is {cam.height}x{cam.width} px but the image is {h}x{w}; "
            "pass the CameraConfig the store was collected with"
        )
    return cam


def densify(points: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Resample a polyline (N, 2) [m] every `step` metres (keeps the vertices' order)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] < 1e-6:
        return points[:1]
    grid = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(grid, s, points[:, 0]), np.interp(grid, s, points[:, 1])], axis=1)


def render_plan(
    scene: Scene, cam: CameraConfig | None = None, scale: int = 2, line_width: int = 3
) -> np.ndarray:
    """(H·scale, W·scale, 3) uint8: the front camera with the valid future trajectory as a red line."""
    if scale < 1:
        raise ValueError(f"render: scale must be >= 1, got {scale}")
    priv = require_privileged(scene, "render")
    image = scene.agent_input.camera
    cam = camera_for(image, cam)
    n = max(int(priv.future_valid.sum()), 1)
    path = np.vstack([np.zeros((1, 2)), priv.future_trajectory[:n, :2].astype(np.float64)])
    dense = densify(path)
    pts = np.concatenate([dense, np.zeros((len(dense), 1))], axis=1)
    uv, in_front = project_points(pts, cam)
    pil = Image.fromarray(image)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pil)
    visible = uv[in_front] * scale
    if len(visible) >= 2:
        draw.line([tuple(p) for p in visible.tolist()], fill=RED, width=line_width, joint="curve")
    elif len(visible) == 1:
        u, v = visible[0]
        draw.ellipse([u - line_width, v - line_width, u + line_width, v + line_width], fill=RED)
    return np.asarray(pil)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: np.ndarray) -> str:
    """`data:image/png;base64,...` URL of an (H, W, 3) uint8 image (for OpenAI-style image_url content)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
