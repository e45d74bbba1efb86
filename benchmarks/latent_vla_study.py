"""LatentVLA at small scale on a SceneStore: LAM → codes → probe → teacher → cached logits → latency.

    OMP_NUM_THREADS=1 python benchmarks/latent_vla_study.py --store /tmp/lvla/store --out /tmp/lvla/run \
        [--corpus /tmp/lvla/extra_store ...] [--student-epochs 5 | --student-ade 3.3]

Prints per stage the val reconstruction MSE vs copying the current frame, ego/env code perplexity, the
trajectory probe (held-out ADE of an MLP reading the codes vs the mean trajectory, shuffled ego codes, env
codes, both), teacher token accuracy / perplexity on val next to the per-position majority baseline, and
batch-1 latency of the VLM-in-the-loop planner vs the distilled student. This is the order the pipeline
follows. `--lam.<field>=<value>` overrides LatentActionConfig, `--teacher.<field>=<value>` VLMTeacherConfig;
`--lam-only` stops after the probe. `--corpus` adds every sample of other stores (unlabelled video: the
students never see them) to the LAM's and the teacher's training set; the gate
(`methods.latent_vla_quality.latent_teacher_quality`) is evaluated on the study store's val split, against an
imitation TransFuser trained on the study store's train split (`--student-epochs`) or a given `--student-ade`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from drivedistill import registry
from drivedistill.config import from_dict, parse_overrides, to_dict
from drivedistill.data.dataset import SceneDataset, collate
from drivedistill.data.store import SceneStore
from drivedistill.methods.base import MethodContext
from drivedistill.methods.latent_vla_quality import latent_teacher_quality, plan_ade
from drivedistill.models.latent_action import LatentActionConfig, LatentActionModel, perplexity
from drivedistill.models.latent_action.encode import (
    EGO_CODES_KEY,
    encode_latent_actions,
    position_majority_accuracy,
    probe_trajectory,
)
from drivedistill.models.teachers.vlm import VLMTeacherConfig, cache_teacher_logits
from drivedistill.recipes.latent_vla import _refit_detokenizer
from drivedistill.train.loop import TrainConfig, fit


def _latency(module: torch.nn.Module, inputs: object, repeats: int = 20) -> float:
    """Median batch-1 latency [ms] in eval mode, after 3 warm-up calls."""
    module.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            t = time.perf_counter()
            module(inputs)
            if i >= 3:
                times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def _futures(ds: SceneDataset) -> np.ndarray:
    """(N, 8, 3) expert futures of a split, in dataset order."""
    out = []
    for t in ds.tokens:
        priv = ds.store.load(t).privileged
        if priv is None:
            raise ValueError(f"{t}: the store has no privileged part")
        out.append(priv.future_trajectory)
    return np.stack(out)


@torch.no_grad()
def _val_losses(model: LatentActionModel, ds: SceneDataset, keys: tuple[str, ...]) -> dict[str, float]:
    """Sample-weighted mean of some `losses()` entries over a split, in eval mode."""
    model.eval()
    sums = dict.fromkeys(keys, 0.0)
    for j in range(0, len(ds), 32):
        items = [ds[i] for i in range(j, min(j + 32, len(ds)))]
        out = model.losses(ds.collate(items))
        for k in keys:
            sums[k] += float(out[k]) * len(items)
    model.train()
    return {k: round(v / len(ds), 5) for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lam-epochs", type=int, default=15)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument(
        "--lam-steps", type=int, default=0, help="cap on optimiser steps per LAM stage (0 = none)"
    )
    ap.add_argument("--teacher-steps", type=int, default=0, help="cap on teacher optimiser steps (0 = none)")
    ap.add_argument(
        "--corpus", nargs="*", default=[], help="extra stores (all splits) for the LAM and teacher"
    )
    ap.add_argument(
        "--student-epochs", type=int, default=0, help="train an imitation TransFuser for the gate"
    )
    ap.add_argument("--student-ade", type=float, default=None, help="the imitation student's val ADE [m]")
    ap.add_argument("--lam-only", action="store_true", help="stop after the LAM probe (no teacher, latency)")
    ap.add_argument("--no-latency", action="store_true")
    args, overrides = ap.parse_known_args()
    parsed = parse_overrides(overrides)
    lam_cfg = from_dict(LatentActionConfig, parsed.get("lam", {}), "lam")
    out = Path(args.out)
    store = SceneStore(args.store)
    train, val = (
        SceneDataset(store, "train", cache_decoded=True),
        SceneDataset(store, "val", cache_decoded=True),
    )
    extra = [SceneDataset(SceneStore(c), None, cache_decoded=True) for c in args.corpus]
    corpus = torch.utils.data.ConcatDataset([train, *extra])
    print(f"samples: train {len(train)}, val {len(val)}, LAM/teacher corpus {len(corpus)}")
    results: dict[str, object] = {
        "samples": {"student_train": len(train), "val": len(val), "lam_teacher_train": len(corpus)}
    }

    # 1. latent action model: env stage, then ego stage (env frozen)
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg)
    results["lam"] = to_dict(lam_cfg)
    tcfg = TrainConfig(
        epochs=args.lam_epochs,
        max_steps=args.lam_steps,
        batch_size=16,
        lr=1e-3,
        progress=False,
        log_every=20,
    )
    t0 = time.time()
    r = fit(lam, corpus, tcfg, out / "lam_env", collate=train.collate)
    print("LAM env", r.losses, f"{time.time() - t0:.0f}s")
    keys = ("recon", "copy_baseline", "recon_weighted", "copy_weighted", "perplexity")
    results["val_env_stage"] = _val_losses(lam, val, keys)
    lam.set_stage("ego")
    r = fit(lam, corpus, tcfg, out / "lam_ego", collate=train.collate)
    print("LAM ego", r.losses, f"{time.time() - t0:.0f}s")
    results["val_ego_stage"] = _val_losses(
        lam,
        val,
        keys
        + (("motion",) if lam_cfg.motion_weight > 0 else ())
        + (("traj",) if lam_cfg.traj_weight > 0 else ()),
    )
    results["lam_train_s"] = time.time() - t0

    # 2. codes for the cache, perplexity and the probe
    codes = {s: encode_latent_actions(lam, ds) for s, ds in (("train", train), ("val", val))}
    corpus_codes = dict(codes["train"])
    for ds in extra:
        corpus_codes.update(encode_latent_actions(lam, ds))
    # the pipeline's detokenizer refit on the frozen codes (lam.detok_steps; 0 = off)
    t0 = time.time()
    results["detokenizer"] = _refit_detokenizer(lam, corpus, corpus_codes, seed=0)
    results["detokenizer"]["seconds"] = round(time.time() - t0, 1)
    env = {s: encode_latent_actions(lam, ds, which="env") for s, ds in (("train", train), ("val", val))}

    def arr(d: dict[str, np.ndarray], ds: SceneDataset) -> np.ndarray:
        return np.stack([d[t] for t in ds.tokens])

    traj = {"train": _futures(train), "val": _futures(val)}
    ego_tr, ego_va, env_tr, env_va = (
        arr(codes["train"], train),
        arr(codes["val"], val),
        arr(env["train"], train),
        arr(env["val"], val),
    )
    results["ego_perplexity_val"] = float(perplexity(torch.as_tensor(ego_va), 16))
    results["env_perplexity_val"] = float(perplexity(torch.as_tensor(env_va), lam.cfg.env_codebook_size))
    k_env = lam.cfg.env_codebook_size
    probes = {
        "ego": probe_trajectory(ego_tr, traj["train"], ego_va, traj["val"], 16),
        "env": probe_trajectory(env_tr, traj["train"], env_va, traj["val"], k_env),
        "ego+env": probe_trajectory(
            np.concatenate([ego_tr, env_tr + 16], 1),
            traj["train"],
            np.concatenate([ego_va, env_va + 16], 1),
            traj["val"],
            16 + k_env,
        ),
        "ego_shuffled": probe_trajectory(
            ego_tr, traj["train"], np.random.default_rng(0).permutation(ego_va), traj["val"], 16
        ),
    }
    results["probe_ade_val_m"] = {k: round(v.ade, 3) for k, v in probes.items()}
    results["mean_traj_ade_val_m"] = round(probes["ego"].mean_baseline_ade, 3)
    results["ego_position_majority_acc_val"] = round(position_majority_accuracy(ego_tr, ego_va), 3)
    print(json.dumps(results, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.lam_only:
        return

    # 3. teacher: NLL on the codes from camera + instruction
    train_c = SceneDataset(store, "train", extras={EGO_CODES_KEY: codes["train"]}, cache_decoded=True)
    val_c = SceneDataset(store, "val", extras={EGO_CODES_KEY: codes["val"]}, cache_decoded=True)
    corpus_c = torch.utils.data.ConcatDataset(
        [train_c, *(SceneDataset(ds.store, None, cache_decoded=True) for ds in extra)]
    )
    extras = {EGO_CODES_KEY: corpus_codes}
    torch.manual_seed(0)
    hw = [int(x) for x in val[0].agent_input.camera.shape[:2]]
    tcfg_teacher = from_dict(
        VLMTeacherConfig, {"vlm": {"image_hw": hw}, **parsed.get("teacher", {})}, "teacher"
    )
    results["teacher"] = to_dict(tcfg_teacher)
    teacher = registry.build("teacher", "vlm", tcfg_teacher)
    t0 = time.time()
    r = fit(
        teacher,
        corpus_c,
        TrainConfig(
            epochs=args.teacher_epochs,
            max_steps=args.teacher_steps,
            batch_size=16,
            lr=2e-3,
            progress=False,
            log_every=20,
        ),
        out / "teacher",
        collate=lambda scenes: collate(scenes, extras),
    )
    results["teacher_train_s"] = time.time() - t0
    teacher.eval()
    with torch.no_grad():
        parts = [
            teacher.losses(val_c.collate([val_c[i] for i in range(j, min(j + 32, len(val_c)))]))
            for j in range(0, len(val_c), 32)
        ]
    results["teacher_val"] = {
        k: round(float(np.mean([float(p[k]) for p in parts])), 3)
        for k in ("action_nll", "perplexity", "token_acc", "action_acc")
    }
    teacher.save(out / "teacher_dir")

    # 3b. the teacher-quality gate, against an imitation TransFuser trained on the labelled split only
    student_ade = args.student_ade
    if student_ade is None and args.student_epochs > 0:
        entry = registry.get("student", "transfuser")
        assert entry.config_cls is not None
        bev_c = int(train[0].agent_input.bev.shape[-1])
        torch.manual_seed(0)
        student_cfg = entry.config_cls(
            bev_channels=bev_c, hidden_dim=64, num_heads=4, num_fusion_layers=1, num_decoder_layers=1
        )
        imitation = registry.build(
            "method",
            "imitation",
            student=registry.build("student", "transfuser", student_cfg),
            context=MethodContext(),
        )
        t0 = time.time()
        fit(
            imitation,
            train,
            TrainConfig(epochs=args.student_epochs, batch_size=16, lr=1e-3, progress=False, log_every=20),
            out / "student",
            collate=train.collate,
        )
        results["student_train_s"] = time.time() - t0
        student = imitation.deployable().eval()
        student_ade = plan_ade(student.plan, val)  # type: ignore[operator]
    t0 = time.time()
    gate = latent_teacher_quality(teacher, lam, train_c, val_c, student_ade_m=student_ade)
    results["gate_s"] = time.time() - t0
    results["gate"] = gate
    print(json.dumps(gate, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.no_latency:
        return

    # 4. cached teacher logits for latent_vla_distill
    t0 = time.time()
    logits = cache_teacher_logits(teacher, train_c)
    results["cache_logits_s_per_sample"] = (time.time() - t0) / len(train_c)
    np.savez_compressed(out / "teacher_logits_train.npz", **logits)  # type: ignore[arg-type]

    # 5. batch-1 latency: VLM in the loop vs distilled student (same student config)
    entry = registry.get("student", "transfuser")
    assert entry.config_cls is not None
    bev_c = int(train[0].agent_input.bev.shape[-1])
    in_loop = registry.build(
        "method",
        "latent_vla",
        student=registry.build("student", "transfuser", entry.config_cls(bev_channels=bev_c)),
        context=MethodContext(artifacts={"teacher/vlm": out / "teacher_dir"}),
    )
    distill = registry.build(
        "method",
        "latent_vla_distill",
        student=registry.build("student", "transfuser", entry.config_cls(bev_channels=bev_c)),
        context=MethodContext(),
    )
    inputs = train.collate([val[0]]).inputs
    results["latency_ms_b1"] = {
        "latent_vla (VLM in loop)": _latency(in_loop.deployable(), inputs),
        "latent_vla_distill (student)": _latency(distill.deployable(), inputs),
    }
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
