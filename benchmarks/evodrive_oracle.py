"""EvoDrive's oracle as a teacher, and the VLA student against constant velocity, on a collected store.

    nice -n 10 python benchmarks/evodrive_oracle.py STORE --out /tmp/h7/run.json \
        [--oracle-epochs 4] [--student-epochs 5] [--plan-text residual] [--no-future-path]
        [--skip-student] [--skip-oracle] [--oracle-init VLM_DIR]

Same models, sizes and training loop as the `default` preset's EvoDrive stages (tiny Qwen2.5-VL of the
preset, perception pretraining 150 steps, AdamW through `train.loop.fit`, batch 8, lr 2e-3):
1. perception pretraining (cached in --perception-dir);
2. the oracle: trained `--oracle-epochs`, then `oracle_quality` (free-running ST-P3 L2, PDMS,
   teacher-forced CE) against `--ref-l2` (the best imitation student's ST-P3 L2) and the student's CE;
3. the VLA student (`vla_sft`, `--student-epochs`): ST-P3 L2 and PDMS of its greedy plans on val, its
   teacher-forced CE, and constant velocity (the `constant_velocity` student) on the same scenes.
Wall and CPU seconds per stage are printed (CPU = process time, all threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivedistill import registry
from drivedistill.data.dataset import SceneDataset
from drivedistill.data.store import SceneStore
from drivedistill.methods.evodrive import oracle_quality, teacher_forced_ce
from drivedistill.models.perception import PerceptionConfig, pretrain_perception
from drivedistill.models.students.vla import VLAConfig
from drivedistill.models.teachers.oracle import OracleConfig
from drivedistill.models.vlm import VLMConfig, VLMCore
from drivedistill.train.evaluate import EvalConfig, evaluate_plans, plan_scenes
from drivedistill.train.loop import TrainConfig, fit
from drivedistill.utils.runtime import seed_everything

PRESET_VLM = {"hidden_size": 96, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 192}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - t[0], 1), "cpu_s": round(time.process_time() - t[1], 1)}


def score(plans: np.ndarray, scenes: list[Any]) -> dict[str, Any]:
    res = evaluate_plans(
        plans, scenes, None, dataclasses.replace(EvalConfig(device="cpu"), closed_loop=False), None
    )
    return {"l2_stp3": res["openloop"]["stp3"]["l2"]["avg"], "pdms": res["pdms"]["mean"]["pdms"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--out", required=True)
    ap.add_argument("--perception-dir", default="/tmp/h7/perception")
    ap.add_argument("--oracle-epochs", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--plan-text", default="residual", choices=["residual", "absolute"])
    ap.add_argument("--no-future-path", action="store_true")
    ap.add_argument("--future-status-steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ref-l2", type=float, default=1.22, help="best imitation student's ST-P3 L2 [m]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--oracle-init", default="", help="VLM dir the oracle starts from (default: the perception VLM)"
    )
    ap.add_argument("--skip-oracle", action="store_true")
    ap.add_argument("--skip-student", action="store_true")
    args = ap.parse_args()

    store = SceneStore(args.store)
    train_ds = SceneDataset(store, "train", cache_decoded=True)
    train = list(store.scenes("train"))
    val = list(store.scenes("val"))
    cam = store.config.get("world", {}).get("camera", {})
    vlm = VLMConfig(
        image_hw=(int(cam.get("height", 128)), int(cam.get("width", 256))), vision_depth=1, **PRESET_VLM
    )
    res: dict[str, Any] = {"args": vars(args), "train": len(train), "val": len(val)}
    pdir = Path(args.perception_dir)
    if not (pdir / "config.json").exists():
        t = clock()
        torch.manual_seed(0)
        core = VLMCore.build(vlm)
        pretrain_perception(core, train, PerceptionConfig(steps=150), seed=0)
        core.save(pdir)
        res["perception"] = since(t)
    cv = registry.build("student", "constant_velocity", None)
    res["constant_velocity"] = score(plan_scenes(cv, val), val)
    print("constant_velocity", res["constant_velocity"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="evod_", dir="/tmp/h7"))

    student_ce = None
    if not args.skip_student:
        t = clock()
        seed_everything(args.seed)
        scfg = VLAConfig(vlm=VLMConfig(pretrained_dir=str(pdir)), plan_text=args.plan_text)
        student = registry.build("student", "vla", scfg)
        method = registry.build("method", "vla_sft", None, student=student)
        tcfg = TrainConfig(
            epochs=args.student_epochs, batch_size=8, lr=args.lr, progress=False, seed=args.seed
        )
        fit(method, train_ds, tcfg, work / "student", collate=train_ds.collate)
        res["student_train"] = since(t)
        t = clock()
        student.eval()
        plans = plan_scenes(student, val)
        res["student"] = {**score(plans, val), "parse_failures": dict(student.decode_stats)}
        student_ce = teacher_forced_ce(student, val)
        res["student"]["ce_teacher_forced"] = student_ce
        res["student_eval"] = since(t)
        print("student", json.dumps(res["student"]), res["student_train"], flush=True)

    if not args.skip_oracle:
        t = clock()
        seed_everything(args.seed)
        ocfg = OracleConfig(
            vlm=VLMConfig(pretrained_dir=args.oracle_init or str(pdir)),
            plan_text=args.plan_text,
            future_path=not args.no_future_path,
            future_status_steps=args.future_status_steps,
        )
        oracle = registry.build("teacher", "oracle", ocfg)
        tcfg = TrainConfig(
            epochs=args.oracle_epochs, batch_size=8, lr=args.lr, progress=False, seed=args.seed
        )
        result = fit(oracle, train_ds, tcfg, work / "oracle", collate=train_ds.collate)
        res["oracle_train"] = {**since(t), "last_losses": result.losses}
        oracle.save(work / "oracle_model")
        t = clock()
        ref = {"l2_stp3": args.ref_l2} | ({} if student_ce is None else {"ce": student_ce})
        res["oracle_quality"] = oracle_quality(oracle, val, ref)
        res["oracle_eval"] = since(t)
        q = res["oracle_quality"]
        print(
            "oracle",
            q["l2_stp3"],
            q["pdms"],
            q["ce_teacher_forced"],
            q["gate"],
            res["oracle_train"],
            flush=True,
        )
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
