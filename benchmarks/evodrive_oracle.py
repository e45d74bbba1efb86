"""EvoDrive's oracle as a teacher, and the VLA student against constant velocity, on a collected store.

    nice -n 10 python benchmarks/evodrive_oracle.py STORE --out /tmp/h1/run.json \
        [--perception-dir VLM_DIR] [--oracle-epochs 4] [--student-epochs 5] [--plan-text residual]
        [--no-hint] [--future-path] [--skip-student] [--skip-oracle] [--oracle-init VLM_DIR]
        [--oracle-dir SAVED_ORACLE] [--ref-l2 M] [--ref-ce NATS] [--evodrive]

Same models, sizes and training loop as the `default` preset's EvoDrive stages (tiny Qwen2.5-VL of the
preset, perception pretraining 150 steps, AdamW through `train.loop.fit`, batch 8, lr 2e-3):
1. perception pretraining (cached in --perception-dir);
2. the oracle: trained `--oracle-epochs`, then `oracle_quality` (free-running ST-P3 L2, PDMS,
   teacher-forced CE) against `--ref-l2` (the best imitation student's ST-P3 L2) and the student's CE;
3. the VLA student (`vla_sft`, `--student-epochs`): ST-P3 L2 and PDMS of its greedy plans on val, its
   teacher-forced CE, and constant velocity (the `constant_velocity` student) on the same scenes;
4. `--evodrive`: the VLA student distilled from that oracle (`evodrive`, the default preset's method
   config: 4 MC-dropout samples, teacher targets precomputed), same seed and schedule as 3.
Also: the dead-reckoned future path's own ST-P3 L2 on val (what the hint channel hands the oracle), and
how often its token count equals the answer's. `--perception-dir` may be a run's perception artifact
(`runs/<preset>/stages/evodrive_perception-*/perception`); if it does not exist it is pretrained there.
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
from drivedistill.data.dataset import SceneDataset, collate
from drivedistill.data.store import SceneStore
from drivedistill.methods.evodrive import EvoDriveConfig, oracle_quality, teacher_forced_ce
from drivedistill.models.perception import PerceptionConfig
from drivedistill.models.students.vla import VLAConfig, poses_from_xy
from drivedistill.models.teachers.oracle import OracleConfig, OracleTeacher, dead_reckon
from drivedistill.models.vlm import VLMConfig, VLMCore
from drivedistill.recipes.evodrive import pretrain_perception
from drivedistill.train.evaluate import EvalConfig, evaluate_plans, plan_scenes
from drivedistill.train.loop import TrainConfig, fit
from drivedistill.train.run import WithExtras
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
    ap.add_argument("--perception-dir", default="/tmp/h1/perception")
    ap.add_argument("--work", default="/tmp/h1", help="scratch dir for checkpoints")
    ap.add_argument("--oracle-epochs", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--plan-text", default="residual", choices=["residual", "absolute"])
    ap.add_argument("--future-path", action="store_true", help="also write the path into the prompt")
    ap.add_argument("--no-hint", action="store_true", help="no hint channel (the oracle before it)")
    ap.add_argument("--future-status-steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ref-l2", type=float, default=1.04, help="best imitation student's ST-P3 L2 [m]")
    ap.add_argument("--ref-ce", type=float, default=None, help="the SFT student's CE (else measured)")
    ap.add_argument("--evodrive", action="store_true", help="also distil a VLA student from the oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--oracle-init", default="", help="VLM dir the oracle starts from (default: the perception VLM)"
    )
    ap.add_argument("--oracle-dir", default="", help="a saved oracle to evaluate instead of training one")
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
        pretrain_perception(core, train, PerceptionConfig(steps=150), pdir.parent / "pretrain", seed=0)
        core.save(pdir)
        res["perception"] = since(t)
    cv = registry.build("student", "constant_velocity", None)
    res["constant_velocity"] = score(plan_scenes(cv, val), val)
    print("constant_velocity", res["constant_velocity"], flush=True)
    vb = collate(val)
    assert vb.privileged is not None
    path = dead_reckon(vb.inputs.ego_status, vb.privileged.future_ego_status, 6)
    res["dead_reckoned_path"] = score(poses_from_xy(path).numpy().astype(np.float64), val)
    res["dead_reckoned_path"]["l2_stp3_steps"] = evaluate_plans(
        poses_from_xy(path).numpy().astype(np.float64), val, None, EvalConfig(device="cpu", pdms=False,
        closed_loop=False), None
    )["openloop"]["stp3"]["l2"]  # fmt: skip
    print("dead_reckoned_path", res["dead_reckoned_path"], flush=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="evod_", dir=args.work))

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
            future_path=args.future_path,
            hint=not args.no_hint,
            future_status_steps=args.future_status_steps,
        )
        oracle = (
            OracleTeacher.load(args.oracle_dir)
            if args.oracle_dir
            else registry.build("teacher", "oracle", ocfg)
        )
        if oracle.hint is not None:  # rows whose hint has the answer's token count (position-aligned)
            hints = oracle.hint_ids(vb)
            enc = oracle.encode(vb)
            assert hints is not None and enc.labels is not None
            same = ((hints != -100).sum(1) == (enc.labels != -100).sum(1)).float().mean()
            res["hint_token_count_equals_answer"] = float(same)
        tcfg = TrainConfig(
            epochs=args.oracle_epochs, batch_size=8, lr=args.lr, progress=False, seed=args.seed
        )
        if args.oracle_dir:  # trained before: evaluate (and distil from) it as saved
            oracle_dir = Path(args.oracle_dir)
            res["oracle_train"] = {"loaded": args.oracle_dir}
        else:
            result = fit(oracle, train_ds, tcfg, work / "oracle", collate=train_ds.collate)
            res["oracle_train"] = {**since(t), "last_losses": result.losses}
            oracle_dir = work / "oracle_model"
            oracle.save(oracle_dir)
        t = clock()
        ce_ref = args.ref_ce if args.ref_ce is not None else student_ce
        ref = {"l2_stp3": args.ref_l2} | ({} if ce_ref is None else {"ce": ce_ref})
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
        if args.evodrive:
            res["evodrive"] = distil(args, pdir, work, train_ds, val, OracleTeacher.load(oracle_dir))
            print("evodrive", json.dumps(res["evodrive"]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))


def distil(
    args: argparse.Namespace, pdir: Path, work: Path, train_ds: SceneDataset, val: list[Any], oracle: Any
) -> dict[str, Any]:
    """`vla/evodrive` from `oracle`: the default preset's method config and the `vla_sft` schedule."""
    t = clock()
    seed_everything(args.seed)
    scfg = VLAConfig(vlm=VLMConfig(pretrained_dir=str(pdir)), plan_text=args.plan_text)
    student = registry.build("student", "vla", scfg)
    mcfg = EvoDriveConfig(num_samples=4, teacher_targets="precompute")
    method = registry.build("method", "evodrive", mcfg, student=student, teacher=oracle)
    pre = method.precompute_extras(train_ds, train_ds.collate, 8)
    tcfg = TrainConfig(epochs=args.student_epochs, batch_size=8, lr=args.lr, progress=False, seed=args.seed)
    fit(method, train_ds, tcfg, work / "evodrive", collate=WithExtras(train_ds.collate, pre))
    out: dict[str, Any] = {"train": since(t)}
    student.eval()
    student.decode_stats.update(decoded=0, parse_failures=0)
    out |= {**score(plan_scenes(student, val), val), "parse_failures": dict(student.decode_stats)}
    out["ce_teacher_forced"] = teacher_forced_ce(student, val)
    return out


if __name__ == "__main__":
    main()
