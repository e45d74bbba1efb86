"""EvoDriveVLA: perception-pretrained VLA students distilled from a future-aware oracle teacher.

Stages: `evodrive_perception` (pretrain the tiny VLM's vision encoder on BEV occupancy, probe it before
and after, save it as the VLA students' starting point) and `evodrive_oracle` (the future-aware oracle
teacher, coarse-to-fine, started from the perception VLM; artifact "oracle", read online by the
`evodrive` method). Methods: `vla_sft` (the baseline: the same VLA fine-tuned on trajectories) and
`evodrive` (its rungs are method_cfg switches). Reference row "oracle/privileged": the oracle planning
alone from privileged future frames. Every VLA row gets a perception probe of its vision encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivedistill.config import ConfigError, check, to_dict
from drivedistill.data.corpus import CorpusConfig
from drivedistill.models.perception import PerceptionConfig
from drivedistill.models.teachers.oracle import OracleConfig
from drivedistill.models.vlm import VLMConfig
from drivedistill.recipes.base import MethodUse, Recipe, Reference, Stage, StageContext, store_image_hw
from drivedistill.registry import register
from drivedistill.train.loop import TrainConfig, train_section

PERCEPTION_CODE_VERSION = 2  # bump when `perception_stage` computes something else, same config
# the same for `oracle_stage`: 2 = residual plan text and the dead-reckoned "future path" in its prompt;
# 3 = the future path through the hint channel (models/vlm/hint.py) instead of the prompt
ORACLE_CODE_VERSION = 3
# the same for the evodrive method's training: 2 = MC-dropout candidates took their logits one token
# late before; 3 = the anchor loss collapsed once the AnchorFormer weights underflowed (visual KD);
# 4 = residual plan text (answers relative to constant velocity); 5 = teacher targets from the oracle's
# hint-channel passes
EVODRIVE_CODE_VERSION = 5
VLA_SFT_CODE_VERSION = 2  # 2 = residual plan text


@dataclass
class OracleTrainConfig(TrainConfig):
    """Training of the oracle teacher."""

    epochs: int = field(default=4, metadata=check(ge=1))
    batch_size: int = field(default=8, metadata=check(ge=1))
    lr: float = field(default=2e-3, metadata=check(gt=0))
    log_every: int = field(default=10, metadata=check(ge=1))


@dataclass
class EvoDriveRecipeConfig:
    """`recipes.evodrive`: the VLM, its perception pretraining and the oracle teacher."""

    vlm: VLMConfig = field(default_factory=VLMConfig)  # architecture of the students' and oracle's VLM
    # (H, W) [px] the VLM reads; None: the store's camera
    image_hw: tuple[int, int] | None = field(default=None, metadata=check(ge=1))
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    # extra unlabelled episodes the perception pretraining reads on top of the students' train split
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # perception pretraining seed (the study seed under `teachers: per_seed`)
    seed: int = field(default=0, metadata=check(ge=0))
    oracle: OracleConfig = field(default_factory=OracleConfig)
    oracle_train: OracleTrainConfig = field(default_factory=OracleTrainConfig)
    probe_after: bool = True  # probe every VLA row's vision encoder after planning fine-tuning
    # the oracle's gate: free-running ST-P3 L2 at most this × the best imitation student's (issue #16)
    gate_l2_ratio: float = field(default=0.5, metadata=check(gt=0))

    def __post_init__(self) -> None:
        if self.vlm.image_hw != VLMConfig().image_hw:
            raise ConfigError("recipes.evodrive.vlm.image_hw: set recipes.evodrive.image_hw instead")
        if self.oracle.vlm.pretrained_dir:
            raise ConfigError(
                "recipes.evodrive.oracle.vlm.pretrained_dir: the oracle starts from the perception VLM"
            )


def pretrain_perception(
    core: Any,
    scenes: Iterable[Any],
    cfg: PerceptionConfig,
    out_dir: Path,
    seed: int = 0,
    device: str = "cpu",
    val: Sequence[Any] = (),
) -> dict[str, float]:
    """Pretrain the core's vision encoder + merger on BEV occupancy with the training loop (`cfg.steps`
    steps of `cfg.batch_size` at a constant `cfg.lr`, no weight decay or clipping; checkpoints in
    `out_dir`, so an interrupted stage resumes) → the mean training-set BCE before ("first") and after
    ("last"), and with `val` scenes the pretraining head's own occupancy IoU on them ("head_val_iou", at
    its logit-0 threshold). The head is discarded; save the core as the students' starting point."""
    from drivedistill.models.perception import OccupancyPretraining, scene_arrays
    from drivedistill.train.loop import fit

    model, samples = OccupancyPretraining.build(core, scenes, cfg, seed)
    first = model.mean_loss(samples)
    batch_size = min(cfg.batch_size, len(samples))
    train_cfg = TrainConfig(
        epochs=max(1, -(-cfg.steps // max(len(samples) // batch_size, 1))),
        max_steps=cfg.steps,
        batch_size=batch_size,
        lr=cfg.lr,
        weight_decay=0.0,
        warmup=0.0,
        min_lr_ratio=1.0,  # a constant learning rate
        grad_clip=0.0,
        seed=seed,
        device=device,
        log_every=max(1, min(10, cfg.steps)),
        progress=False,
    )
    resume = (out_dir / "checkpoints").exists()
    fit(model, samples, train_cfg, out_dir, collate=model.collate, resume=resume)
    model.cpu()
    out = {"first": first, "last": model.mean_loss(samples)}
    if val:
        out["head_val_iou"] = model.evaluate([(*scene_arrays(s, cfg), s.token) for s in val])["iou"]
    return out


def perception_stage(cfg: EvoDriveRecipeConfig, ctx: StageContext) -> Any:
    """Build the tiny VLM, pretrain its vision encoder on BEV occupancy over the students' train split +
    the recipe's corpus (`cfg.corpus`: extra episodes the students never see, collected into the stage
    directory), probe it, save it. The summary holds the probe on the random-init and on the pretrained
    encoder (the probe reads the students' train split, is scored on val: val IoU, train IoU, feature
    effective rank), the pretraining head's own val IoU, the per-cell-prior baselines and the sample
    counts."""
    from drivedistill.data.corpus import study_corpus
    from drivedistill.data.store import SceneStore
    from drivedistill.models.perception import linear_probe, probe_baselines
    from drivedistill.models.vlm import VLMCore

    vlm_cfg = dataclasses.replace(cfg.vlm, image_hw=cfg.image_hw or store_image_hw(ctx.store))
    seed = cfg.seed if ctx.seed is None else ctx.seed

    def run(d: Path) -> dict[str, Any]:
        import itertools

        import torch

        scenes = SceneStore(ctx.store.store_dir())
        train, val = list(scenes.scenes("train")), list(scenes.scenes("val"))
        extra = study_corpus(scenes, cfg.corpus, d / "corpus", "recipes.evodrive.corpus")
        torch.manual_seed(seed)
        core = VLMCore.build(vlm_cfg)
        fresh = linear_probe(core, train, val, cfg.perception)
        pretrain = itertools.chain(train, *(e.scenes(None) for e in extra))
        losses = pretrain_perception(
            core, pretrain, cfg.perception, seed=seed, out_dir=d / "pretrain", device=ctx.device, val=val
        )
        before = linear_probe(core, train, val, cfg.perception)
        core.save(d / "perception")
        return {
            "probe_random_init": fresh,
            "probe_pretrained": before,
            "pretrain_loss": losses,
            "baselines": probe_baselines(train, val, cfg.perception),
            "samples": {
                "probe_train": len(train),
                "pretrain": len(train) + sum(len(e.tokens(None)) for e in extra),
            },
            "artifacts": {"perception": "perception"},
            "student_paths": {"vla": {"vlm": {"pretrained_dir": "perception"}}},
        }

    stage_cfg = {"vlm": to_dict(vlm_cfg), "perception": to_dict(cfg.perception), "seed": seed}
    if cfg.corpus.extra_episodes:  # 0: the key of the stages before the corpus existed
        stage_cfg["corpus"] = to_dict(cfg.corpus)
    return ctx.run(stage_cfg, [ctx.store], run)


def oracle_stage(cfg: EvoDriveRecipeConfig, ctx: StageContext) -> Any:
    """Train the future-aware oracle (coarse-to-fine) from the perception-pretrained VLM."""
    from drivedistill import registry
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    perception = ctx.prior["evodrive_perception"]
    seed = cfg.oracle_train.seed if ctx.seed is None else ctx.seed
    train_cfg = dataclasses.replace(cfg.oracle_train, device=ctx.device, seed=seed)
    oracle_cfg = dataclasses.replace(
        cfg.oracle,
        vlm=dataclasses.replace(cfg.oracle.vlm, pretrained_dir=str(perception.path / "perception")),
    )

    def run(d: Path) -> dict[str, Any]:
        scenes = SceneStore(ctx.store.store_dir())
        train = SceneDataset(scenes, "train", cache_decoded=True)
        seed_everything(train_cfg.seed)
        oracle = registry.build("teacher", "oracle", oracle_cfg)
        resume = (d / "train" / "checkpoints").exists()
        result = fit(oracle, train, train_cfg, d / "train", collate=train.collate, resume=resume)
        oracle.save(d / "oracle")
        return {"train_losses": result.losses, "artifacts": {"oracle": "oracle"}}

    stage_cfg = {"oracle": to_dict(cfg.oracle), "train": train_section(train_cfg)}
    return ctx.run(stage_cfg, [ctx.store, perception], run)


def oracle_plans(cfg: EvoDriveRecipeConfig, oracle: Any, scenes: list[Any]) -> tuple[Any, dict[str, Any]]:
    """The oracle teacher alone (its "teacher" row): the refined greedy plans it writes from the current
    and future front frames and the future ego status → ((N, 8, 3) plans, its parameters and parse
    failures). Failed parses are counted and replaced by the fallback plan, as for the students."""
    import numpy as np

    from drivedistill.data.dataset import collate
    from drivedistill.models.students.vla import poses_from_xy
    from drivedistill.models.teachers.oracle import OracleTeacher

    teacher = OracleTeacher.load(oracle.path / "oracle", cfg.oracle).eval()
    plans, failures, examples = [], 0, []
    for start in range(0, len(scenes), 16):
        xy, texts, failed = teacher.plan(collate(scenes[start : start + 16]))
        plans.append(poses_from_xy(xy).numpy())
        failures += int(failed.sum())
        examples += [t for t, f in zip(texts, failed.tolist()) if f]
    from drivedistill.methods.evodrive import teacher_forced_ce

    extra = {
        "ce_teacher_forced": teacher_forced_ce(teacher, scenes),  # its coarse pass; the gate compares
        "params_m": sum(p.numel() for p in teacher.parameters()) / 1e6,
        "parse_failures": {"count": failures, "decoded": len(scenes)},
        "parse_failure_examples": examples[:3],
    }
    return np.concatenate(plans), extra


def perception_probe(cfg: EvoDriveRecipeConfig, module: Any, store: Any, tokens: list[str]) -> dict[str, Any]:
    """The perception probe of a VLA row's vision encoder after planning fine-tuning (linear probe on
    the frozen visual tokens; occupancy IoU / accuracy on the evaluated validation scenes)."""
    core = getattr(module, "core", None)
    if core is None or not cfg.probe_after:
        return {}
    from drivedistill.models.perception import linear_probe, probe_baselines

    val = [store.load(t) for t in tokens]
    train = list(store.scenes("train"))
    from drivedistill.methods.evodrive import teacher_forced_ce
    from drivedistill.models.students.vla import VLAStudent

    probe: dict[str, Any] = dict(linear_probe(core, train, val, cfg.perception))
    probe["baselines"] = probe_baselines(train, val, cfg.perception)  # what an IoU must beat
    out: dict[str, Any] = {"perception_probe": probe}
    if isinstance(module, VLAStudent):  # the CE the oracle must beat (student_gate)
        out["ce_teacher_forced"] = teacher_forced_ce(module, val)
    return out


ORACLE_ROW = "oracle/privileged"


def student_gate(cfg: EvoDriveRecipeConfig, models: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle against this run's students (issue #16's gate): its free-running ST-P3 L2 at most
    `cfg.gate_l2_ratio` × the best imitation student's, and its teacher-forced CE below the VLA SFT
    student's — the lowest of the run's `vla_sft` rows, e.g. the largest labelled set of a learning-curve
    run (both on the validation scenes; the rows of the oracle's seed, means over seeds for one oracle per
    run). A missing row fails its check."""

    def value(row: str, *path: str) -> float | None:
        node: Any = models.get(row, {})
        for p in path:
            node = node.get(p) if isinstance(node, Mapping) else None
        return float(node) if isinstance(node, int | float) else None

    l2 = ("openloop", "stp3", "l2", "avg")
    students: dict[str, float] = {}
    for n, m in models.items():
        v = value(n, *l2)
        if m.get("method") == "imitation" and v is not None:
            students[n] = v
    best = min(students, key=students.__getitem__, default=None)
    oracle_l2, oracle_ce = value(ORACLE_ROW, *l2), value(ORACLE_ROW, "ce_teacher_forced")
    sft = {
        n: v
        for n, m in models.items()
        if m.get("method") == "vla_sft" and (v := value(n, "ce_teacher_forced")) is not None
    }
    sft_row = min(sft, key=sft.__getitem__, default=None)
    sft_ce = sft[sft_row] if sft_row is not None else None
    limit = cfg.gate_l2_ratio * students[best] if best is not None else None
    checks = {
        "oracle_l2_within_ratio_of_best_student": (
            oracle_l2 is not None and limit is not None and oracle_l2 <= limit
        ),
        "oracle_ce_below_sft_student": oracle_ce is not None and sft_ce is not None and oracle_ce < sft_ce,
    }
    metrics = {
        "oracle_l2_stp3_m": oracle_l2,
        "best_imitation_student": best,
        "best_imitation_l2_stp3_m": students.get(best) if best else None,
        "l2_limit_m": limit,
        "oracle_pdms": value(ORACLE_ROW, "pdms", "pdms"),
        "best_imitation_pdms": value(best, "pdms", "pdms") if best else None,
        "oracle_ce": oracle_ce,
        "sft_student": sft_row,
        "sft_student_ce": sft_ce,
    }
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


def quality(cfg: EvoDriveRecipeConfig, stages: Mapping[str, Any]) -> dict[str, Any]:
    """Gate: perception pretraining made the vision encoder's occupancy probe better than the same
    probe on the random-init encoder: the same logistic probe (same train scenes, standardised
    flattened visual tokens, 0.5 threshold) on the same validation scenes, compared by occupancy IoU.
    Also reported (not checked): the pretraining head's own val IoU, the per-cell-prior IoU (best train
    threshold) and the effective rank of both encoders' features. Reads the stage summary."""
    del cfg
    perception = stages["evodrive_perception"].summary
    fresh = perception.get("probe_random_init", {}).get("iou")
    pretrained = perception.get("probe_pretrained", {}).get("iou")
    checks = {"probe_beats_random_init": None not in (fresh, pretrained) and pretrained > fresh}
    metrics: dict[str, Any] = {
        "probe_iou_random_init": fresh,
        "probe_iou_pretrained": pretrained,
        "pretrain_head_val_iou": perception.get("pretrain_loss", {}).get("head_val_iou"),
        "cell_prior_iou": perception.get("baselines", {}).get("cell_prior_best_threshold", {}).get("iou"),
        "feature_effective_rank_random_init": perception.get("probe_random_init", {}).get(
            "feature_effective_rank"
        ),
        "feature_effective_rank_pretrained": perception.get("probe_pretrained", {}).get(
            "feature_effective_rank"
        ),
    }
    if "evodrive_oracle" in stages:
        metrics["oracle_train_losses"] = stages["evodrive_oracle"].summary.get("train_losses")
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


@register("recipe", "evodrive", EvoDriveRecipeConfig)
def build(cfg: EvoDriveRecipeConfig) -> Recipe:
    del cfg
    return Recipe(
        name="evodrive",
        stages=(
            Stage("evodrive_perception", perception_stage, code_version=PERCEPTION_CODE_VERSION, cost=0.9),
            Stage(
                "evodrive_oracle",
                oracle_stage,
                ("evodrive_perception",),
                code_version=ORACLE_CODE_VERSION,
                cost=1.6,
            ),
        ),
        methods=(
            MethodUse("vla_sft", ("evodrive_perception",), baseline=None, code_version=VLA_SFT_CODE_VERSION),
            MethodUse(
                "evodrive",
                ("evodrive_perception", "evodrive_oracle"),
                baseline="vla_sft",
                code_version=EVODRIVE_CODE_VERSION,
                cost=1.45,
            ),
        ),
        references=(
            Reference("oracle/privileged", "evodrive_oracle", oracle_plans, key=lambda c: to_dict(c.oracle)),
        ),
        quality=quality,
        student_gate=student_gate,
        row_metrics=perception_probe,
        row_metrics_key=lambda c: {"perception": to_dict(c.perception), "probe_after": c.probe_after},
    )
