"""Vectorised planar geometry for scoring: SE(2) transforms, oriented boxes, SAT overlap, polylines.

Everything works on numpy arrays with arbitrary leading batch dimensions; no Python loops over boxes.
Angles are radians, counter-clockwise; lengths are metres.
"""

from __future__ import annotations

import numpy as np

# Corner order of ego boxes (NAVSIM's BBCoordsIndex): the front bumper is the segment 0 → 3.
FRONT_LEFT, REAR_LEFT, REAR_RIGHT, FRONT_RIGHT, CENTER = 0, 1, 2, 3, 4


def normalize_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap angles to [-π, π)."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def relative_to_absolute(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Map poses (..., 3) given in the frame of `origin` (3,) [x, y, yaw] to the frame `origin` lives in."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    x = origin[0] + c * poses[..., 0] - s * poses[..., 1]
    y = origin[1] + s * poses[..., 0] + c * poses[..., 1]
    return np.stack([x, y, poses[..., 2] + origin[2]], axis=-1)


def absolute_to_relative(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Inverse of `relative_to_absolute`: poses (..., 3) expressed in the frame of `origin` (3,)."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    dx, dy = poses[..., 0] - origin[0], poses[..., 1] - origin[1]
    return np.stack([c * dx + s * dy, -s * dx + c * dy, normalize_angle(poses[..., 2] - origin[2])], axis=-1)


def box_corners(
    center: np.ndarray, yaw: np.ndarray, length: np.ndarray | float, width: np.ndarray | float
) -> np.ndarray:
    """Corners (..., 4, 2) of oriented boxes in the order front-left, rear-left, rear-right, front-right.

    center (..., 2) box centre [m]; yaw (...) heading [rad]; length, width (...) [m] (broadcastable).
    """
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = 0.5 * np.asarray(length), 0.5 * np.asarray(width)
    fx, fy = c * hl, s * hl  # half-length along the heading
    lx, ly = -s * hw, c * hw  # half-width to the left
    cx, cy = center[..., 0], center[..., 1]
    xs = np.stack([cx + fx + lx, cx - fx + lx, cx - fx - lx, cx + fx - lx], axis=-1)
    ys = np.stack([cy + fy + ly, cy - fy + ly, cy - fy - ly, cy + fy - ly], axis=-1)
    return np.stack([xs, ys], axis=-1)


def _edge_normals(poly: np.ndarray) -> np.ndarray:
    """Unnormalised edge normals (..., n, 2) of a convex polygon (..., n, 2) (n = 2: a segment, 1 normal)."""
    if poly.shape[-2] == 2:
        edge = poly[..., 1:2, :] - poly[..., 0:1, :]
    else:
        edge = np.roll(poly, -1, axis=-2) - poly
    return np.stack([-edge[..., 1], edge[..., 0]], axis=-1)


def convex_intersects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Separating-axis test: do convex polygons a (..., n, 2) and b (..., m, 2) touch or overlap? → (...) bool.

    Works for boxes (n = 4) and segments (n = 2); touching boundaries count as intersecting (shapely's
    `intersects`).
    """
    axes = np.concatenate([_edge_normals(a), _edge_normals(b)], axis=-2)  # (..., k, 2)
    ax, ay = axes[..., :, None, 0], axes[..., :, None, 1]  # (..., k, 1): projections without einsum
    pa = ax * a[..., None, :, 0] + ay * a[..., None, :, 1]  # (..., k, n)
    pb = ax * b[..., None, :, 0] + ay * b[..., None, :, 1]
    separated = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~separated.any(-1)


def polyline_arclength(line: np.ndarray) -> np.ndarray:
    """Cumulative arc length (P,) of a polyline (P, 2) [m]."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=-1))])


def project_to_polyline(line: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length and signed lateral offset (left > 0) of the nearest point on `line` (P, 2) for points (..., 2).

    Like shapely's `LineString.project`, the arc length is clamped to [0, length].
    """
    seg_a, seg_b = line[:-1], line[1:]
    d = seg_b - seg_a  # (S, 2)
    seg_len2 = np.maximum((d**2).sum(-1), 1e-12)
    rel = points[..., None, :] - seg_a  # (..., S, 2)
    t = np.clip((rel * d).sum(-1) / seg_len2, 0.0, 1.0)
    nearest = seg_a + t[..., None] * d
    dist2 = ((points[..., None, :] - nearest) ** 2).sum(-1)
    best = dist2.argmin(-1)
    cum = polyline_arclength(line)
    t_best = np.take_along_axis(t, best[..., None], -1)[..., 0]
    s = cum[best] + t_best * np.sqrt(seg_len2[best])
    rel_best = np.take_along_axis(rel, best[..., None, None].repeat(2, -1), -2)[..., 0, :]
    d_best = d[best]
    cross = d_best[..., 0] * rel_best[..., 1] - d_best[..., 1] * rel_best[..., 0]
    lateral = np.sign(cross) * np.sqrt(np.take_along_axis(dist2, best[..., None], -1)[..., 0])
    return s, lateral


def interpolate_polyline(line: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses (..., 3) x, y, heading at arc lengths `s` (...) along `line` (P, 2); clamped at the ends."""
    cum = polyline_arclength(line)
    s = np.clip(s, 0.0, cum[-1])
    idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(line) - 2)
    seg = line[idx + 1] - line[idx]
    seg_len = np.maximum(np.linalg.norm(seg, axis=-1), 1e-9)
    frac = (s - cum[idx]) / seg_len
    xy = line[idx] + frac[..., None] * seg
    heading = np.arctan2(seg[..., 1], seg[..., 0])
    return np.concatenate([xy, heading[..., None]], axis=-1)


def resample_polyline(line: np.ndarray, step: float) -> np.ndarray:
    """Polyline (P, 2) resampled every `step` metres (keeps both ends); drops repeated points first."""
    keep = np.concatenate([[True], np.linalg.norm(np.diff(line, axis=0), axis=-1) > 1e-6])
    line = line[keep]
    if len(line) < 2:
        raise ValueError(f"resample_polyline: need at least 2 distinct points, got {len(line)}")
    total = polyline_arclength(line)[-1]
    s = np.append(np.arange(0.0, total, step), total)
    return interpolate_polyline(line, s)[:, :2]
