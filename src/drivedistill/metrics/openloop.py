"""nuScenes open-loop planning metrics: L2 and collision under the ST-P3 and the UniAD protocols.

Per-step vectors (length 6, steps 0.5 ... 3.0 s) are computed once, vectorised over samples, with the
constants of the ST-P3 `PlanningMetric` that UniAD, VAD and their successors reuse; both protocols are
derived from them (see docs/metrics-openloop.md and shared/reference/openloop-metrics.md):

- UniAD  value at 1 / 2 / 3 s = per-step vector at indices 1, 3, 5;
- ST-P3  mean of the per-step vector over all steps up to the horizon: v[:2], v[:4], v[:6];
- Avg.   plain mean of the three horizon numbers.

Reference behaviour reproduced on purpose: L2 = sqrt(sum_xy((pred - gt)^2 · valid)) with invalid steps
counted as 0 in a denominator of all samples; collision = any cell of the translated 32-cell ego
footprint occupied (`obj_box_col`, the number papers report) or the waypoint's centre cell occupied
(`obj_col`); truncating int casts; steps where the GT trajectory itself collides are not counted.
Trajectories are (x, y) [m] in the current ego frame (x forward, y left); collisions are in percent.
numpy only (no torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from drivedistill.metrics.occupancy import (
    CELL_CENTRE_OFFSET,
    EGO_FORWARD_OFFSET,
    EGO_LENGTH,
    EGO_WIDTH,
    GRID_RES,
    GRID_SIZE,
    NUM_STEPS,
    OCCUPANCY_CLASSES,
    PackedOccupancy,
    box_cells,
    ego_footprint_offsets,
    occupancy_from_scene,
    to_cell_units,
)
from drivedistill.registry import register
from drivedistill.types import Scene

PROTOCOLS = ("uniad", "stp3")
HORIZONS = ("1s", "2s", "3s")
UNIAD_STEP_INDICES = (1, 3, 5)  # 1.0, 2.0, 3.0 s on the 0.5 s grid
STP3_STEP_COUNTS = (2, 4, 6)  # mean over the first 2 / 4 / 6 steps
_CLIP_M = 1e4  # [m] waypoints are clipped here before int casts (no overflow); far outside the grid


@dataclass(frozen=True)
class OpenLoopOptions:
    """Named protocol options; the defaults are the reference (ST-P3 core) behaviour.

    occupancy_classes  "vehicles" (UniAD) | "vehicles+pedestrians" (ST-P3 / VAD) | "unspecified"
                       (occupancy supplied as arrays without saying what it holds)
    ego_box            "translated": the 32-cell footprint, never rotated (reference) |
                       "rotated": the ego box rotated by heading, centre 0.5 m ahead along the heading
    collision          "per_step" (reference) | "any_hit": a step counts once any step up to it collided
    l2                 "reference": valid mask inside the sqrt, all samples in the denominator |
                       "strict": mean over the samples valid at that step only
    gt_mask            do not count collisions at steps where the GT trajectory collides (reference: on)
    """

    occupancy_classes: str = "vehicles+pedestrians"
    ego_box: str = "translated"
    collision: str = "per_step"
    l2: str = "reference"
    gt_mask: bool = True

    def __post_init__(self) -> None:
        allowed = {
            "occupancy_classes": (*OCCUPANCY_CLASSES, "unspecified"),
            "ego_box": ("translated", "rotated"),
            "collision": ("per_step", "any_hit"),
            "l2": ("reference", "strict"),
        }
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(
                    f"OpenLoopOptions.{name}: {getattr(self, name)!r} unknown; use one of {list(values)}"
                )


@dataclass
class StepMetrics:
    """Per-sample, per-step results of one batch (N samples, 6 steps).

    l2          (N, 6) float  reference L2 [m]: sqrt(sum_xy((pred - gt)^2 · valid))
    distance    (N, 6) float  unmasked displacement |pred - gt| [m] (for the strict variant)
    valid       (N, 6) bool   GT step valid
    obj_col     (N, 6) bool   centre cell occupied (after the GT mask and the any-hit option)
    obj_box_col (N, 6) bool   footprint hits an occupied cell (after the GT mask and the any-hit option)
    gt_box_col  (N, 6) bool   the GT trajectory's footprint hits an occupied cell (the masked steps)
    """

    l2: np.ndarray
    distance: np.ndarray
    valid: np.ndarray
    obj_col: np.ndarray
    obj_box_col: np.ndarray
    gt_box_col: np.ndarray


def _check(
    name: str, arr: np.ndarray, n: int | None, last: tuple[int, ...], kinds: str, fix: str
) -> np.ndarray:
    """Require ndarray (n, ≥6, *last) (last entries of -1: 2 or 3) with dtype kind in `kinds`; first 6 steps."""
    arr = np.asarray(arr)
    want = (
        f"({'N' if n is None else n}, >={NUM_STEPS}{''.join(', 2|3' if d < 0 else f', {d}' for d in last)})"
    )
    ok_shape = arr.ndim == 2 + len(last) and arr.shape[1] >= NUM_STEPS and (n is None or arr.shape[0] == n)
    ok_shape = ok_shape and all(d == s or (d < 0 and s in (2, 3)) for d, s in zip(last, arr.shape[2:]))
    if not ok_shape:
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}. {fix}")
    if arr.dtype.kind not in kinds:
        raise ValueError(f"{name}: expected dtype kind in {kinds!r}, got {arr.dtype}. {fix}")
    if arr.dtype.kind == "f" and not np.isfinite(arr[:, :NUM_STEPS]).all():
        raise ValueError(
            f"{name}: contains NaN or Inf; write 0 at invalid steps and mark them in `valid`. {fix}"
        )
    return arr[:, :NUM_STEPS]


def headings(traj: np.ndarray) -> np.ndarray:
    """Headings (N, T) [rad]: the yaw column of (N, T, 3) poses, else the direction of travel.

    From (N, T, 2) waypoints: atan2 of the step from the previous waypoint (the origin before step 0);
    steps shorter than 1 mm keep the previous heading (0 at the start).
    """
    if traj.shape[-1] == 3:
        return np.asarray(traj[..., 2], np.float64)
    xy = np.asarray(traj[..., :2], np.float64)
    step = np.diff(xy, axis=1, prepend=np.zeros_like(xy[:, :1]))
    raw = np.arctan2(step[..., 1], step[..., 0])
    t = np.arange(xy.shape[1])
    last_moving = np.maximum.accumulate(np.where(np.hypot(step[..., 0], step[..., 1]) > 1e-3, t, -1), axis=1)
    return np.where(last_moving >= 0, np.take_along_axis(raw, np.maximum(last_moving, 0), axis=1), 0.0)


def footprint_hits(traj: np.ndarray, occupancy: np.ndarray, ego_box: str = "translated") -> np.ndarray:
    """(N, 6) bool: the ego box at each waypoint of `traj` (N, 6, 2|3) overlaps `occupancy` (N, 6, 200, 200).

    "translated" (reference): cells trunc(p / 0.5 + offsets) of the 32 precomputed footprint offsets,
    clipped into the grid (so a footprint leaving the grid reads the border cells, as the reference does).
    "rotated": cells whose centre lies in the box rotated by heading; cells off the grid are dropped.
    """
    n, t = traj.shape[:2]
    xy = np.clip(np.asarray(traj[..., :2], np.float64), -_CLIP_M, _CLIP_M)
    nn, tt = np.arange(n)[:, None, None], np.arange(t)[None, :, None]
    if ego_box == "translated":
        cells = (xy[:, :, None, :] / GRID_RES + ego_footprint_offsets()[None, None]).astype(np.int64)
        cells = np.clip(cells, 0, GRID_SIZE - 1)  # (N, 6, 32, 2)
        return occupancy[nn, tt, cells[..., 0], cells[..., 1]].any(axis=-1)
    yaw = headings(traj).reshape(-1)
    centres = xy.reshape(-1, 2) + EGO_FORWARD_OFFSET * np.stack([np.cos(yaw), np.sin(yaw)], -1)
    ones = np.ones_like(yaw)
    ii, jj, inside = box_cells(centres, yaw, EGO_LENGTH * ones, EGO_WIDTH * ones)  # (N·6, K, 1), (N·6, 1, K)
    k = ii.shape[1]
    ii = np.clip(ii, 0, GRID_SIZE - 1).reshape(n, t, k, 1)
    jj = np.clip(jj, 0, GRID_SIZE - 1).reshape(n, t, 1, k)
    hit = occupancy[nn[..., None], tt[..., None], ii, jj] & inside.reshape(n, t, k, k)
    return hit.any(axis=(-1, -2))


def centre_hits(traj: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """(N, 6) bool: the cell trunc((p + 49.75) / 0.5) of each waypoint is in the grid and occupied."""
    n, t = traj.shape[:2]
    xy = np.clip(np.asarray(traj[..., :2], np.float64), -_CLIP_M, _CLIP_M)
    cells = to_cell_units(xy).astype(np.int64)  # truncation toward zero, like torch .long()
    inside = ((cells >= 0) & (cells < GRID_SIZE)).all(axis=-1)
    cells = np.clip(cells, 0, GRID_SIZE - 1)
    return occupancy[np.arange(n)[:, None], np.arange(t)[None, :], cells[..., 0], cells[..., 1]] & inside


def step_metrics(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, occupancy: np.ndarray, options: OpenLoopOptions
) -> StepMetrics:
    """Per-sample, per-step L2 and collisions of one batch.

    pred (N, ≥6, 2|3) and gt (N, ≥6, 2|3): x, y [, yaw] [m, m, rad] at 0.5 ... 3.0 s, current ego frame
    (only the first 6 steps are read; yaw only by the rotated ego box); valid (N, ≥6) bool;
    occupancy (N, 6, 200, 200) bool (or 0/1 integers), or a `PackedOccupancy` of the same grid, see
    `drivedistill.metrics.occupancy`.
    """
    pred = _check("pred trajectory", pred, None, (-1,), "fiu", "Pass (N, 6, 2) waypoints in metres.")
    n = pred.shape[0]
    gt = _check("gt trajectory", gt, n, (-1,), "fiu", "Pass (N, 6, 2) waypoints for the same N samples.")
    valid = _check("gt valid", valid, n, (), "b", "Pass a (N, 6) bool mask.")
    occ: Any
    if isinstance(occupancy, PackedOccupancy):  # compact GT: cells are read from the bits directly
        if len(occupancy) != n:
            raise ValueError(f"occupancy_packed: {len(occupancy)} samples, trajectories have {n}")
        occ = occupancy
    else:
        occ = np.asarray(occupancy)
        if occ.shape != (n, NUM_STEPS, GRID_SIZE, GRID_SIZE) or occ.dtype.kind not in "biu":
            raise ValueError(
                f"occupancy: expected ({n}, {NUM_STEPS}, {GRID_SIZE}, {GRID_SIZE}) bool, got {occ.shape} "
                f"{occ.dtype}. Rasterise the future boxes with drivedistill.metrics.occupancy."
            )
        occ = occ if occ.dtype == bool else occ != 0
    diff2 = (np.asarray(pred[..., :2], np.float64) - np.asarray(gt[..., :2], np.float64)) ** 2
    gt_box = footprint_hits(gt, occ, options.ego_box)
    box = footprint_hits(pred, occ, options.ego_box)
    centre = centre_hits(pred, occ)
    if options.gt_mask:
        box &= ~gt_box
        centre &= ~gt_box
    if options.collision == "any_hit":
        box = np.logical_or.accumulate(box, axis=1)
        centre = np.logical_or.accumulate(centre, axis=1)
    return StepMetrics(
        l2=np.sqrt((diff2 * valid[..., None]).sum(-1)),
        distance=np.sqrt(diff2.sum(-1)),
        valid=valid,
        obj_col=centre,
        obj_box_col=box,
        gt_box_col=gt_box,
    )


def horizon_summary(per_step: Sequence[float] | np.ndarray, protocol: str) -> dict[str, float]:
    """{"1s", "2s", "3s", "avg"} from a length-6 per-step vector under "uniad" or "stp3"."""
    v = np.asarray(per_step, np.float64)
    if v.shape != (NUM_STEPS,):
        raise ValueError(f"per-step vector: expected shape ({NUM_STEPS},), got {v.shape}")
    if protocol == "uniad":
        values = [float(v[i]) for i in UNIAD_STEP_INDICES]
    elif protocol == "stp3":
        values = [float(v[:k].mean()) for k in STP3_STEP_COUNTS]
    else:
        raise ValueError(f"protocol {protocol!r} unknown; use one of {list(PROTOCOLS)}")
    return {**dict(zip(HORIZONS, values)), "avg": float(np.mean(values))}


def token_hash(tokens: Sequence[str]) -> str:
    """First 16 hex digits of sha256 over the newline-joined tokens (identifies the sample set and order)."""
    return hashlib.sha256("\n".join(tokens).encode()).hexdigest()[:16]


_RULES = {
    "uniad": "value at 1/2/3 s = per-step index 1/3/5; avg = mean of the three",
    "stp3": "value at 1/2/3 s = mean of per-step v[:2]/v[:4]/v[:6]; avg = mean of the three",
}


class OpenLoopAccumulator:
    """Sums per-step results over batches (`update`), then derives both protocols (`result`)."""

    def __init__(self, options: OpenLoopOptions | None = None) -> None:
        self.options = options or OpenLoopOptions()
        self.num_samples = 0
        self._sums = {
            k: np.zeros(NUM_STEPS)
            for k in ("l2", "l2_strict", "valid", "obj_col", "obj_box_col", "gt_box_col")
        }

    def update(
        self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, occupancy: np.ndarray
    ) -> StepMetrics:
        """Score one batch (shapes as in `step_metrics`) and add it to the sums."""
        sm = step_metrics(pred, gt, valid, occupancy, self.options)
        self.num_samples += sm.l2.shape[0]
        self._sums["l2"] += sm.l2.sum(0)
        self._sums["l2_strict"] += (sm.distance * sm.valid).sum(0)
        for key in ("valid", "obj_col", "obj_box_col", "gt_box_col"):
            self._sums[key] += getattr(sm, key).sum(0)
        return sm

    def result(self, tokens: Sequence[str] | None = None) -> dict[str, Any]:
        """The result dict (schema in docs/metrics-openloop.md): L2 [m], collisions [%], protocol metadata."""
        n = self.num_samples
        if n == 0:
            raise ValueError(
                "open-loop evaluation: no samples were scored; call update() with at least one sample"
            )
        if tokens is not None:
            tokens = list(tokens)
            if len(tokens) != n:
                raise ValueError(
                    f"tokens: {len(tokens)} given for {n} scored samples; pass one token per sample, in order"
                )
            if len(set(tokens)) != n:
                raise ValueError(
                    f"tokens: {n - len(set(tokens))} duplicates; each sample must be scored once"
                )
        s = self._sums
        if self.options.l2 == "strict":
            if (s["valid"] == 0).any():
                raise ValueError(
                    f"strict L2: no valid sample at steps {np.flatnonzero(s['valid'] == 0).tolist()}; use l2='reference'"
                )
            l2 = s["l2_strict"] / s["valid"]
        else:
            l2 = s["l2"] / n
        per_step = {
            "l2": l2.tolist(),
            "obj_col": (100 * s["obj_col"] / n).tolist(),
            "obj_box_col": (100 * s["obj_box_col"] / n).tolist(),
            "gt_box_col": (100 * s["gt_box_col"] / n).tolist(),
            "valid_count": [int(c) for c in s["valid"]],
        }
        out: dict[str, Any] = {"num_samples": n, "per_step": per_step}
        for protocol in PROTOCOLS:
            out[protocol] = {
                "protocol": protocol,
                "rule": _RULES[protocol],
                "l2": horizon_summary(l2, protocol),
                "collision": horizon_summary(per_step["obj_box_col"], protocol),
            }
        out["protocol"] = "nuscenes_openloop"
        out["options"] = {
            **asdict(self.options),
            "grid": {
                "resolution_m": GRID_RES,
                "size": [GRID_SIZE, GRID_SIZE],
                "cell_centre_offset_m": CELL_CENTRE_OFFSET,
            },
            "ego_box_m": {"length": EGO_LENGTH, "width": EGO_WIDTH, "forward_offset": EGO_FORWARD_OFFSET},
            "footprint_cells": len(ego_footprint_offsets()) if self.options.ego_box == "translated" else None,
            "num_samples": n,
            "token_hash": None if tokens is None else token_hash(tokens),
            "units": {
                "l2": "m",
                "collision": "percent",
                "steps_s": [0.5 * (k + 1) for k in range(NUM_STEPS)],
            },
        }
        return out


@register("metric", "openloop", OpenLoopOptions)
def build(cfg: OpenLoopOptions) -> OpenLoopAccumulator:
    """An empty accumulator: `update` batches, then `result` gives both protocols."""
    return OpenLoopAccumulator(cfg)


def evaluate_openloop(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    occupancy: np.ndarray,
    *,
    tokens: Sequence[str] | None = None,
    options: OpenLoopOptions | None = None,
) -> dict[str, Any]:
    """Score arrays (shapes as in `step_metrics`) under both protocols; see `OpenLoopAccumulator.result`."""
    acc = OpenLoopAccumulator(options)
    acc.update(pred, gt, valid, occupancy)
    return acc.result(tokens)


def evaluate_openloop_scenes(
    pred: np.ndarray, scenes: Sequence[Scene], *, chunk_size: int = 256, **options: Any
) -> dict[str, Any]:
    """Score plans on scenes of any store: pred (N, ≥6, 2|3) [m, m(, rad)], current ego frame.

    The GT is each scene's `privileged.future_trajectory[:6]` / `future_valid[:6]`, the occupancy is
    rasterised from its agent boxes (`occupancy_from_scene` with `options["occupancy_classes"]`);
    `options` are `OpenLoopOptions` fields. Tokens are hashed into the result.
    """
    opts = OpenLoopOptions(**options)
    if opts.occupancy_classes == "unspecified":
        raise ValueError(
            "occupancy_classes: scenes are rasterised here; choose one of " + str(sorted(OCCUPANCY_CLASSES))
        )
    pred = _check("pred trajectory", pred, len(scenes), (-1,), "fiu", "Pass one (≥6, 2|3) plan per scene.")
    acc = OpenLoopAccumulator(opts)
    for start in range(0, len(scenes), chunk_size):
        chunk = scenes[start : start + chunk_size]
        privs = [s.privileged for s in chunk]
        missing = [s.token for s, p in zip(chunk, privs) if p is None]
        if missing:
            raise ValueError(f"scenes {missing[:3]}: privileged part removed; the metric needs the GT future")
        gt = np.stack([p.future_trajectory[:NUM_STEPS] for p in privs if p is not None])
        valid = np.stack([p.future_valid[:NUM_STEPS] for p in privs if p is not None])
        occ = np.stack([occupancy_from_scene(s, opts.occupancy_classes) for s in chunk])
        acc.update(pred[start : start + chunk_size], gt, valid, occ)
    return acc.result([s.token for s in scenes])


def format_table(result: dict[str, Any]) -> str:
    """A small plain-text table of a result dict: both protocols, then the per-step vectors."""
    o = result["options"]
    cols = (*HORIZONS, "avg")
    lines = [
        f"nuScenes open-loop · N={result['num_samples']} · occupancy={o['occupancy_classes']} · "
        f"ego box={o['ego_box']} · gt mask={'on' if o['gt_mask'] else 'off'} · collision={o['collision']} · l2={o['l2']}",
        f"{'protocol':<10}"
        + "".join(f"{'L2 ' + h:>9}" for h in cols)
        + " |"
        + "".join(f"{'col% ' + h:>10}" for h in cols),
    ]
    for p in PROTOCOLS:
        l2, col = result[p]["l2"], result[p]["collision"]
        lines.append(
            f"{p:<10}"
            + "".join(f"{l2[h]:>9.2f}" for h in cols)
            + " |"
            + "".join(f"{col[h]:>10.2f}" for h in cols)
        )
    lines.append(f"{'per step':<12}" + "".join(f"{f'{0.5 * (k + 1)}s':>8}" for k in range(NUM_STEPS)))
    for key in ("l2", "obj_col", "obj_box_col", "gt_box_col"):
        lines.append(f"{key:<12}" + "".join(f"{v:>8.3f}" for v in result["per_step"][key]))
    return "\n".join(lines)
