"""nuScenes open-loop evaluation straight from a SceneStore (any source; made for nuScenes stores).

    drivedistill eval openloop --store STORE --checkpoint RUN [--split val|train|all] [--json OUT.json]
                               [--write-gt GT.npz] [--write-pred PRED.npz]
    drivedistill eval openloop --store STORE --write-gt GT.npz      (only the GT file, for other tools)

GT (`gt_arrays`): the first 6 future poses (0.5 … 3 s) and their validity from each scene's privileged
part, and the occupancy rasterised from its annotated agent boxes at 0.5 … 3 s as ST-P3 builds it: the
classes VEHICLE, BICYCLE and PEDESTRIAN (nuScenes vehicle.* and human.pedestrian.*; movable/static objects
and animals excluded — `nuscenes.category_class`). Both protocols (ST-P3, UniAD) are computed on it.

Ego status: the student plans twice, on the stored inputs ("with_ego_status") and with the ego status
(speed, acceleration, yaw rate) set to 0 ("ego_status_zeroed") — the ablation DESIGN.md asks for; a
student trained with ego status is probed, not retrained, so read the second row as sensitivity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.data.store import SceneStore, StoreError
from drivedistill.metrics.occupancy import NUM_STEPS, occupancy_from_scene
from drivedistill.types import Scene

OCCUPANCY = "vehicles+pedestrians"  # ST-P3 (metrics/occupancy.py OCCUPANCY_CLASSES)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic `numpy.savez_compressed` to exactly `path` (a file handle: numpy adds no suffix)."""
    from drivedistill.utils.io import atomic_write_with

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    atomic_write_with(Path(path), write)


def gt_arrays(scenes: list[Scene], classes: str = OCCUPANCY) -> dict[str, np.ndarray]:
    """GT.npz arrays of `drivedistill eval openloop --gt`: trajectory (N, 6, 2), valid (N, 6), occupancy
    (N, 6, 200, 200) bool, tokens (N,)."""
    privs = [s.privileged for s in scenes]
    if any(p is None for p in privs):
        raise StoreError("open-loop GT needs the scenes' privileged part (future, boxes)")
    return {
        "trajectory": np.stack([p.future_trajectory[:NUM_STEPS, :2] for p in privs if p is not None]).astype(
            np.float32
        ),
        "valid": np.stack([p.future_valid[:NUM_STEPS] for p in privs if p is not None]),
        "occupancy": np.stack([occupancy_from_scene(s, classes) for s in scenes]),
        "tokens": np.array([s.token for s in scenes]),
    }


def evaluate_store(
    student: Any, scenes: list[Scene], batch_size: int = 32, device: str = "cpu"
) -> dict[str, Any]:
    """Both protocols, with and without ego status (see the module docstring)."""
    from drivedistill.metrics.openloop import evaluate_openloop_scenes
    from drivedistill.train.evaluate import plan_scenes

    out: dict[str, Any] = {"occupancy_classes": OCCUPANCY, "num_samples": len(scenes)}
    zeroed = []
    for s in scenes:
        ai = s.agent_input
        blind = type(ai)(ai.camera, ai.bev, ai.ego_history, np.zeros_like(ai.ego_status), ai.command)
        zeroed.append(Scene(s.token, s.episode, s.frame_index, blind, s.privileged, s.meta))
    for key, group in (("with_ego_status", scenes), ("ego_status_zeroed", zeroed)):
        plans = plan_scenes(student, group, batch_size, device)
        out[key] = evaluate_openloop_scenes(plans, group, occupancy_classes=OCCUPANCY)
        out[key]["plans"] = plans
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="drivedistill eval openloop --store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--checkpoint", help="run directory or checkpoints/step_* of a trained student")
    parser.add_argument("--split", default="all", choices=["all", "train", "val"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write-gt", type=Path, help="also write GT.npz (the --gt format)")
    parser.add_argument("--write-pred", type=Path, help="also write PRED.npz (with-ego-status plans)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from drivedistill.utils.io import atomic_write_json

    try:
        store = SceneStore(args.store)
        scenes = list(store.scenes(None if args.split == "all" else args.split))
        if not scenes:
            raise StoreError(f"{args.store}: split {args.split!r} has no samples")
        if args.write_gt:
            gt = gt_arrays(scenes)
            save_npz(args.write_gt, gt)
            print(f"wrote {args.write_gt} ({len(scenes)} samples, occupancy {OCCUPANCY})")
        if not args.checkpoint:
            if not args.write_gt:
                parser.error("give --checkpoint RUN to evaluate, or --write-gt GT.npz")
            return 0
        from drivedistill.metrics.openloop import format_table
        from drivedistill.train.checkpoint import load_student
        from drivedistill.utils.runtime import select_device

        device = select_device("auto")
        result = evaluate_store(load_student(args.checkpoint, device), scenes, args.batch_size, device)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("with_ego_status", "ego_status_zeroed"):
        print(f"[{key}]")
        print(format_table(result[key]))
    if args.write_pred:
        plans = result["with_ego_status"]["plans"]
        tokens = np.array([s.token for s in scenes])
        save_npz(args.write_pred, {"trajectory": plans, "tokens": tokens})
    if args.json:
        for key in ("with_ego_status", "ego_status_zeroed"):
            result[key]["plans"] = np.asarray(result[key]["plans"]).tolist()
        result["store"], result["checkpoint"], result["split"] = str(args.store), args.checkpoint, args.split
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
