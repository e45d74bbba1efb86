"""Small-scale EvoDriveVLA measurements on a collected SceneStore (CPU, minutes).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evodrive_small.py STORE [--steps 120] [--oracle-steps 0]

1. tiny VLM (patch 8 → 32 visual tokens per 64×128 image); occupancy probe at random init;
2. perception pretraining (BEV agent occupancy) → probe;
3. planning fine-tuning from the perception VLM: vla_sft vs evodrive(visual KD only) [vs full evodrive with
   a briefly trained oracle when --oracle-steps > 0] → answer CE on val, parse failures, probe after.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from typing import Any

import torch

from drivedistill import registry
from drivedistill.data.dataset import collate
from drivedistill.data.store import SceneStore
from drivedistill.methods.evodrive import EvoDriveConfig
from drivedistill.methods.vla_sft import answer_ce
from drivedistill.models.perception import PerceptionConfig, linear_probe
from drivedistill.models.students.vla import VLAConfig, VLAStudent
from drivedistill.models.teachers.oracle import OracleConfig
from drivedistill.models.vlm import VLMConfig, VLMCore
from drivedistill.recipes.evodrive import pretrain_perception


def train(model: Any, scenes: list, steps: int, bs: int, lr: float, seed: int) -> list[dict[str, float]]:
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = {id(p) for m in getattr(model, "frozen", list)() for p in m.parameters()}
    opt = torch.optim.AdamW([p for p in params if id(p) not in frozen], lr=lr)
    hist = []
    for _ in range(steps):
        idx = torch.randint(0, len(scenes), (bs,), generator=gen).tolist()
        losses = model.losses(collate([scenes[i] for i in idx]))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        hist.append({k: float(v) for k, v in losses.items()})
    return hist


@torch.no_grad()
def evaluate(student: VLAStudent, scenes: list) -> dict[str, float]:
    batch = collate(scenes)
    enc, out = student.teacher_forced(batch.inputs, batch.require_privileged("eval").trajectory)
    assert enc.labels is not None
    before = dict(student.decode_stats)
    plan = student(batch.inputs).trajectory
    gt = batch.require_privileged("eval").trajectory
    return {
        "val_ce": float(answer_ce(out.logits, enc.labels)),
        "parse_failures": student.decode_stats["parse_failures"] - before["parse_failures"],
        "decoded": student.decode_stats["decoded"] - before["decoded"],
        "l2_3s": float((plan[:, :6, :2] - gt[:, :6, :2]).norm(dim=-1).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--perception-steps", type=int, default=150)
    ap.add_argument("--oracle-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = SceneStore(args.store)
    train_s = list(store.scenes("train"))
    val_s = list(store.scenes("val"))
    pcfg = PerceptionConfig()
    vcfg = VLMConfig(image_hw=(64, 128), patch_size=8)
    res: dict[str, Any] = {"train": len(train_s), "val": len(val_s)}
    torch.manual_seed(0)
    core = VLMCore.build(vcfg)
    res["probe_random_init"] = linear_probe(core, train_s, val_s, pcfg)
    t = time.time()
    hist = pretrain_perception(
        core, train_s, PerceptionConfig(steps=args.perception_steps), tempfile.mkdtemp(prefix="evod_pre_")
    )
    res["perception_pretrain"] = {**hist, "s": time.time() - t}
    res["probe_after_pretraining"] = linear_probe(core, train_s, val_s, pcfg)
    pdir = tempfile.mkdtemp(prefix="evod_perc_")
    core.save(pdir)
    runs: dict[str, tuple[str, Any]] = {
        "vla_sft": ("vla_sft", None),
        "evodrive_visual_kd_only": ("evodrive", EvoDriveConfig(trajectory_kd=False)),
    }
    teacher = None
    if args.oracle_steps:
        teacher = registry.build("teacher", "oracle", OracleConfig(vlm=VLMConfig(pretrained_dir=pdir)))
        t = time.time()
        oh = train(teacher, train_s, args.oracle_steps, 8, args.lr, 1)
        res["oracle_train"] = {
            "first_ce": oh[0]["ce"],
            "last_ce": sum(h["ce"] for h in oh[-10:]) / 10,
            "s": time.time() - t,
        }
        runs["evodrive_full"] = ("evodrive", EvoDriveConfig(num_samples=3))
    for name, (method_name, mcfg) in runs.items():
        torch.manual_seed(0)
        student = registry.build("student", "vla", VLAConfig(vlm=VLMConfig(pretrained_dir=pdir)))
        kw = {"teacher": copy.deepcopy(teacher)} if name == "evodrive_full" else {}
        method = registry.build("method", method_name, mcfg, student=student, **kw)
        t = time.time()
        h = train(method, train_s, args.steps, 8, args.lr, 0)
        last = {k: sum(x[k] for x in h[-10:]) / 10 for k in h[-1]}
        entry: dict[str, Any] = {"train_last10": last, "s": time.time() - t, **evaluate(student, val_s)}
        entry["probe_after"] = linear_probe(student.core, train_s, val_s, pcfg)
        res[name] = entry
        print(name, json.dumps(res[name]), flush=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
