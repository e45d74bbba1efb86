"""LatentVLA: a latent action model gives every sample 12 ego codes; a VLM teacher learns to predict them; students fuse or distil it.

Stages: `latent_lam` (the two-stage latent action model, env then ego; writes the ego codes as extras
and probes them) and `latent_teacher` (the latent-action VLM teacher trained on those codes; writes
its teacher-forced logits as extras, so distillation never runs the VLM, and saves the teacher as the
artifact "teacher/vlm" that `latent_vla` runs in the loop).

Control option `teacher_init: untrained`: the teacher stage saves the freshly initialised teacher
(same seed, no training) and its logits: `latent_vla` rows then fuse features of an untrained VLM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drivedistill.config import ConfigError, to_dict
from drivedistill.models.latent_action import LatentActionConfig
from drivedistill.models.teachers.vlm import VLMTeacherConfig
from drivedistill.models.vlm import VLMConfig
from drivedistill.recipes.base import MethodUse, Recipe, Stage, StageContext, store_image_hw
from drivedistill.registry import register
from drivedistill.train.loop import TrainConfig, train_section

LAM_CODE_VERSION = 1  # bump when `lam_stage` computes something else with an unchanged config
TEACHER_CODE_VERSION = 1  # the same for `teacher_stage`
METHOD_CODE_VERSION = 1  # the same for the latent_vla / latent_vla_distill methods' training


@dataclass
class LamTrainConfig(TrainConfig):
    """Training of each latent-action-model stage (env, ego)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    log_every: int = 20


@dataclass
class TeacherTrainConfig(TrainConfig):
    """Training of the latent-action VLM teacher."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    log_every: int = 20


@dataclass
class LatentVLARecipeConfig:
    """`recipes.latent_vla`: the latent action model and the VLM teacher."""

    lam: LatentActionConfig = field(default_factory=LatentActionConfig)
    lam_train: LamTrainConfig = field(default_factory=LamTrainConfig)
    teacher: VLMTeacherConfig = field(default_factory=VLMTeacherConfig)
    teacher_train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    image_hw: tuple[int, int] | None = None  # (H, W) [px] the teacher reads; None: the store's camera
    teacher_init: Literal["trained", "untrained"] = "trained"  # untrained: the control's random teacher

    def __post_init__(self) -> None:
        if self.teacher.vlm.image_hw != VLMConfig().image_hw:
            raise ConfigError(
                "recipes.latent_vla.teacher.vlm.image_hw: set recipes.latent_vla.image_hw instead"
            )


def _futures(store: Any, tokens: list[str]) -> np.ndarray:
    return np.stack([store.load(t).privileged.future_trajectory for t in tokens])


def _train(train: TrainConfig, ctx: StageContext) -> TrainConfig:
    """The stage's TrainConfig on the study's device, seeded by the teacher seed when there is one."""
    seed = train.seed if ctx.seed is None else ctx.seed
    return dataclasses.replace(train, device=ctx.device, seed=seed)


def lam_stage(cfg: LatentVLARecipeConfig, ctx: StageContext) -> Any:
    """Train the two-stage latent action model; encode the 12 ego codes of every sample; probe them."""
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.latent_action import LatentActionModel, perplexity
    from drivedistill.models.latent_action.encode import (
        EGO_CODES_KEY,
        encode_latent_actions,
        position_majority_accuracy,
        probe_trajectory,
    )
    from drivedistill.recipes.extras import save_extras
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    train_cfg = _train(cfg.lam_train, ctx)
    store = ctx.store

    def run(d: Path) -> dict[str, Any]:
        import torch

        scenes = SceneStore(store.store_dir())
        train = SceneDataset(scenes, "train", cache_decoded=True)
        every = SceneDataset(scenes, None, cache_decoded=True)
        seed_everything(train_cfg.seed)
        lam = LatentActionModel(cfg.lam)
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

    return ctx.run({"lam": to_dict(cfg.lam), "train": train_section(train_cfg)}, [store], run)


def teacher_stage(cfg: LatentVLARecipeConfig, ctx: StageContext) -> Any:
    """Train the latent-action VLM teacher on the LAM codes (or not: `teacher_init: untrained`); cache
    its logits for every training sample."""
    from drivedistill import registry
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.latent_action.encode import EGO_CODES_KEY
    from drivedistill.models.teachers.vlm import TEACHER_LOGITS_KEY, cache_teacher_logits
    from drivedistill.recipes.extras import load_extras, save_extras
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    lam, store = ctx.prior["latent_lam"], ctx.store
    hw = cfg.image_hw or store_image_hw(store)
    teacher_cfg = dataclasses.replace(cfg.teacher, vlm=dataclasses.replace(cfg.teacher.vlm, image_hw=hw))
    train_cfg = _train(cfg.teacher_train, ctx)
    stage_cfg = {"teacher": to_dict(teacher_cfg), "train": train_section(train_cfg), "init": cfg.teacher_init}

    def run(d: Path) -> dict[str, Any]:
        import torch

        scenes = SceneStore(store.store_dir())
        codes = load_extras(lam.path / "extras.npz")[EGO_CODES_KEY]
        train = SceneDataset(scenes, "train", extras={EGO_CODES_KEY: codes}, cache_decoded=True)
        val = SceneDataset(scenes, "val", extras={EGO_CODES_KEY: codes}, cache_decoded=True)
        seed_everything(train_cfg.seed)
        teacher = registry.build("teacher", "vlm", teacher_cfg)
        if cfg.teacher_init == "trained":
            resume = (d / "train" / "checkpoints").exists()
            fit(teacher, train, train_cfg, d / "train", collate=train.collate, resume=resume)
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
        return {"val": metrics, "init": cfg.teacher_init, "artifacts": {"teacher/vlm": "teacher"}}

    return ctx.run(stage_cfg, [store, lam], run)


PROBE_MARGIN = 0.95  # the codes' trajectory probe must beat the mean trajectory's ADE by 5 %


def quality(cfg: LatentVLARecipeConfig, stages: Mapping[str, Any]) -> dict[str, Any]:
    """Gate: the teacher predicts the ego codes on validation scenes better than the per-position
    majority code (the chance level of a code predictor), and the codes carry the trajectory (their
    probe beats the mean trajectory). Reads the stages' summaries; nothing is recomputed."""
    lam = stages["latent_lam"].summary
    teacher = stages["latent_teacher"].summary
    majority = lam.get("ego_code_position_majority_accuracy_val")
    action_acc = teacher.get("val", {}).get("action_acc")
    probe = lam.get("probe_ade_val_m", {})
    metrics = {
        "teacher_action_acc_val": action_acc,
        "majority_code_acc_val": majority,
        "ego_codes_probe_ade_m": probe.get("ego_codes"),
        "mean_trajectory_ade_m": probe.get("mean_trajectory"),
        "teacher_init": cfg.teacher_init,
    }
    checks = {
        "teacher_beats_majority": action_acc is not None and majority is not None and action_acc > majority,
        "codes_beat_mean_trajectory": None not in (probe.get("ego_codes"), probe.get("mean_trajectory"))
        and probe["ego_codes"] < PROBE_MARGIN * probe["mean_trajectory"],
    }
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


@register("recipe", "latent_vla", LatentVLARecipeConfig)
def build(cfg: LatentVLARecipeConfig) -> Recipe:
    del cfg
    needs = ("latent_lam", "latent_teacher")
    return Recipe(
        name="latent_vla",
        stages=(
            Stage("latent_lam", lam_stage, code_version=LAM_CODE_VERSION, cost=1.1),
            Stage(
                "latent_teacher", teacher_stage, ("latent_lam",), code_version=TEACHER_CODE_VERSION, cost=0.7
            ),
        ),
        methods=(
            MethodUse("latent_vla", needs, code_version=METHOD_CODE_VERSION, cost=1.5),
            MethodUse("latent_vla_distill", needs, code_version=METHOD_CODE_VERSION, cost=1.0),
        ),
        quality=quality,
        row_options=("teacher_init",),
    )
