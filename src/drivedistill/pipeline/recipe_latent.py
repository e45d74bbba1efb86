"""LatentVLA stages: the latent action model (env then ego stage) → ego codes for every sample, then the
latent-action VLM teacher → its teacher-forced logits (so distillation never runs the VLM).

Both stages write `extras.npz` (read by the student stages) and a summary with the evidence that the
codes and the teacher mean something (perplexity, trajectory probe, token accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.config import deep_merge, from_dict
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import StudyConfig
from drivedistill.pipeline.extras import save_extras

LAM_TRAIN = {"epochs": 10, "batch_size": 16, "lr": 1e-3, "log_every": 20}
TEACHER_TRAIN = {"epochs": 10, "batch_size": 16, "lr": 2e-3, "log_every": 20}


def _futures(store: Any, tokens: list[str]) -> np.ndarray:
    return np.stack([store.load(t).privileged.future_trajectory for t in tokens])


def lam_stage(runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]) -> Artifact:
    """Train the two-stage latent action model; encode the 12 ego codes of every sample; probe them."""
    from drivedistill.config import to_dict
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.latent_action import LatentActionConfig, LatentActionModel, perplexity
    from drivedistill.models.latent_action.encode import (
        EGO_CODES_KEY,
        encode_latent_actions,
        position_majority_accuracy,
        probe_trajectory,
    )
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    lam_cfg = from_dict(LatentActionConfig, cfg.latent.get("lam", {}), "latent.lam")
    train_cfg = cfg.recipe_train("latent", "lam_train", LAM_TRAIN)
    stage_cfg = {"lam": to_dict(lam_cfg), "train": to_dict(train_cfg)}

    def run(d: Path) -> dict[str, Any]:
        import torch

        scenes = SceneStore(store.store_dir())
        train = SceneDataset(scenes, "train", cache_decoded=True)
        every = SceneDataset(scenes, None, cache_decoded=True)
        seed_everything(train_cfg.seed)
        lam = LatentActionModel(lam_cfg)
        for stage in ("env", "ego"):
            lam.set_stage(stage)
            run_dir = d / f"lam_{stage}"
            fit(
                lam,
                train,
                train_cfg,
                run_dir,
                collate=train.collate,
                resume=(run_dir / "checkpoints").exists(),
            )
        lam.eval()
        codes = encode_latent_actions(lam, every)
        env = encode_latent_actions(lam, every, which="env")
        save_extras(d / "extras.npz", {EGO_CODES_KEY: codes})
        tr, va = scenes.tokens("train"), scenes.tokens("val")
        fut_tr, fut_va = _futures(scenes, tr), _futures(scenes, va)

        def arr(c: dict[str, np.ndarray], toks: list[str]) -> np.ndarray:
            return np.stack([c[t] for t in toks])

        k_env = lam.cfg.env_codebook_size
        ego_probe = probe_trajectory(arr(codes, tr), fut_tr, arr(codes, va), fut_va, 16)
        env_probe = probe_trajectory(arr(env, tr), fut_tr, arr(env, va), fut_va, k_env)
        shuffled = np.random.default_rng(0).permutation(arr(codes, va))
        shuffled_probe = probe_trajectory(arr(codes, tr), fut_tr, shuffled, fut_va, 16)
        return {
            "ego_perplexity_val": float(perplexity(torch.as_tensor(arr(codes, va)), 16)),
            "env_perplexity_val": float(perplexity(torch.as_tensor(arr(env, va)), k_env)),
            "probe_ade_val_m": {
                "ego_codes": ego_probe.ade,
                "env_codes": env_probe.ade,
                "ego_codes_shuffled": shuffled_probe.ade,
                "mean_trajectory": ego_probe.mean_baseline_ade,
            },
            "ego_code_position_majority_accuracy_val": position_majority_accuracy(
                arr(codes, tr), arr(codes, va)
            ),
        }

    return runner.run("latent_lam", stage_cfg, [store], run)


def teacher_stage(
    runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]
) -> Artifact:
    """Train the latent-action VLM teacher on the LAM codes; cache its logits for every training sample."""
    from drivedistill import registry
    from drivedistill.config import to_dict
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.latent_action.encode import EGO_CODES_KEY
    from drivedistill.models.teachers.vlm import TEACHER_LOGITS_KEY, VLMTeacherConfig, cache_teacher_logits
    from drivedistill.pipeline.extras import load_extras
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    lam = prior["latent_lam"]
    scenes = SceneStore(store.store_dir())
    cam = scenes.config.get("world", {}).get("camera", {})
    default_hw = [int(cam.get("height", 128)), int(cam.get("width", 256))]
    teacher_cfg = from_dict(
        VLMTeacherConfig,
        deep_merge({"vlm": {"image_hw": default_hw}}, cfg.latent.get("teacher", {})),
        "latent.teacher",
    )
    train_cfg = cfg.recipe_train("latent", "teacher_train", TEACHER_TRAIN)
    stage_cfg = {"teacher": to_dict(teacher_cfg), "train": to_dict(train_cfg)}

    def run(d: Path) -> dict[str, Any]:
        import torch

        codes = load_extras(lam.path / "extras.npz")[EGO_CODES_KEY]
        train = SceneDataset(scenes, "train", extras={EGO_CODES_KEY: codes}, cache_decoded=True)
        val = SceneDataset(scenes, "val", extras={EGO_CODES_KEY: codes}, cache_decoded=True)
        seed_everything(train_cfg.seed)
        teacher = registry.build("teacher", "vlm", teacher_cfg)
        fit(
            teacher,
            train,
            train_cfg,
            d / "train",
            collate=train.collate,
            resume=(d / "train" / "checkpoints").exists(),
        )
        teacher.eval()
        with torch.no_grad():
            parts = [
                teacher.losses(val.collate([val[i] for i in range(j, min(j + 32, len(val)))]))
                for j in range(0, len(val), 32)
            ]
        metrics = {
            k: float(np.mean([float(p[k]) for p in parts]))
            for k in ("action_nll", "perplexity", "token_acc", "action_acc")
            if k in parts[0]
        }
        teacher.save(d / "teacher")
        logits = cache_teacher_logits(teacher, train)
        save_extras(d / "extras.npz", {TEACHER_LOGITS_KEY: logits})
        return {"val": metrics, "artifacts": {"teacher/vlm": "teacher"}}

    return runner.run("latent_teacher", stage_cfg, [store, lam], run)
