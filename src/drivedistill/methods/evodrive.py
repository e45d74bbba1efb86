"""EvoDriveVLA: trajectory distillation from a future-aware oracle + self-anchored visual distillation.

    L = ce_weight·CE + anchor_weight·L_anchor + hidden_weight·L_hidden + logit_weight·KL(teacher_T ‖ student_T)·T²

on the answer (plan) tokens of the VLA student. Ablation ladder (methods.md §1), each rung a config:

| rung                 | switches                                                                  |
|----------------------|---------------------------------------------------------------------------|
| base                 | method `vla_sft` (or trajectory_kd=false, visual_kd=false)                 |
| + trajectory KD      | trajectory_kd=true refine=false mc_dropout=false visual_kd=false           |
| + refine             | refine=true                                                               |
| + MC-dropout         | mc_dropout=true                                                           |
| + visual KD (full)   | visual_kd=true  (the defaults)                                            |

Defaults follow the public code (hidden SmoothL1 0.2, logits 0.1, AnchorFormer from the first layer);
the paper's variant: hidden_loss=mse hidden_weight=0.1 logit_weight=0.2 anchor_layer=last.

Teacher targets (`teacher_targets`):
- "online": the frozen oracle (artifact "oracle": a dir written by `OracleTeacher.save`) runs on every
  batch, fresh MC-dropout draws each epoch — as the public code does;
- "precompute": the oracle runs once over the training set before training (`precompute_extras`), one
  seeded MC-dropout draw per sample, and the targets are read from the batch extras. The coarse and
  refined passes are deterministic, so only the dropout draws differ from "online"; it costs one teacher
  pass per sample instead of one per sample and epoch (the presets use it to fit the CPU budget);
- "cache": per-token targets already in `Batch.extras` (fill them with `cache_teacher_targets`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext, PrecomputedExtras
from drivedistill.methods.vla_sft import answer_ce
from drivedistill.models.students.base import Student
from drivedistill.models.students.vla import VLAStudent, answer_token_budget
from drivedistill.models.teachers.oracle import OracleConfig, OracleTeacher, answer_slices, select_min_ce
from drivedistill.models.vlm.anchorformer import AnchorFormer
from drivedistill.models.vlm.prompt import Encoded
from drivedistill.registry import register
from drivedistill.types import Batch, Scene

KEY_LOGITS = "evodrive/teacher_logits"  # (B, A, V) float: selected candidate's logits on the answer tokens
KEY_HIDDEN = "evodrive/teacher_hidden"  # (B, A, D) float: its final hidden states at the answer tokens
KEY_CHOICE = "evodrive/teacher_choice"  # (B,) long: index of the selected candidate (diagnostics)
KEY_LENGTH = (
    "evodrive/teacher_length"  # (B,) long: answer tokens per sample (A is padded to the token budget)
)


@dataclass
class EvoDriveConfig:
    ce_weight: float = field(default=1.0, metadata=check(ge=0))
    trajectory_kd: bool = True  # logits + hidden-state distillation from the oracle
    refine: bool = True  # add the refined (coarse-to-fine) candidates
    mc_dropout: bool = True  # add the best-of-MC-dropout candidates
    num_samples: int = field(default=10, metadata=check(ge=1))  # MC-dropout samples per pass
    # MC-dropout p on the teacher's final hidden states
    dropout: float = field(default=0.1, metadata=check(ge=0, lt=1))
    temperature: float = field(default=5.0, metadata=check(gt=0))
    logit_weight: float = field(default=0.1, metadata=check(ge=0))  # code 0.1, paper 0.2
    hidden_weight: float = field(default=0.2, metadata=check(ge=0))  # code 0.2 (SmoothL1), paper 0.1 (MSE)
    hidden_loss: Literal["smooth_l1", "mse"] = "smooth_l1"
    visual_kd: bool = True  # self-anchored visual distillation
    anchor_weight: float = field(default=0.05, metadata=check(ge=0))
    anchor_layer: Literal["first", "last"] = "first"  # code: first, paper: last
    anchor_weighting: bool = True  # False: uniform token weights (ablation of the AnchorFormer)
    teacher_targets: Literal["online", "precompute", "cache"] = "online"  # see the module docstring

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EvoDriveConfig.dropout={self.dropout} must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"EvoDriveConfig.temperature={self.temperature} must be > 0")
        if self.mc_dropout and self.num_samples < 1:
            raise ValueError(
                "EvoDriveConfig: mc_dropout=true needs num_samples >= 1 (or set mc_dropout=false)"
            )


def teacher_targets(
    teacher: OracleTeacher, batch: Batch, cfg: EvoDriveConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The soft targets: per sample the min-CE candidate among {coarse, best dropout coarse, refined,
    best dropout refined} (entries per `cfg.refine` / `cfg.mc_dropout`) → {KEY_LOGITS, KEY_HIDDEN,
    KEY_CHOICE, KEY_LENGTH}; answers are padded to `answer_token_budget(num_poses)` tokens."""
    length = answer_token_budget(teacher.cfg.num_poses, teacher.core.tokenizer)
    cands = teacher.candidates(
        batch, cfg.refine, cfg.num_samples if cfg.mc_dropout else 0, cfg.dropout, length, generator
    )
    sel, choice = select_min_ce(cands)
    enc = teacher.encode(batch)
    assert enc.labels is not None
    counts = (enc.labels != -100).sum(1)
    return {KEY_LOGITS: sel.logits, KEY_HIDDEN: sel.hidden, KEY_CHOICE: choice, KEY_LENGTH: counts}


def cache_teacher_targets(
    teacher: OracleTeacher, batches: Iterable[Batch], cfg: EvoDriveConfig, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Per-token caches for `SceneDataset(..., extras=...)`: name → {token: array}."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, np.ndarray]] = {KEY_LOGITS: {}, KEY_HIDDEN: {}, KEY_CHOICE: {}, KEY_LENGTH: {}}
    teacher.eval()
    for batch in batches:
        t = teacher_targets(teacher, batch, cfg, gen)
        for name, value in t.items():
            for i, token in enumerate(batch.tokens):
                out[name][token] = (
                    value[i].cpu().numpy().astype(np.float16 if value.is_floating_point() else np.int64)
                )
    return out


class EvoDrive(Method):
    """The student VLA + frozen anchor encoder, AnchorFormer and (online) frozen oracle."""

    def __init__(
        self, cfg: EvoDriveConfig, student: VLAStudent, teacher: OracleTeacher | None, seed: int = 0
    ) -> None:
        super().__init__(student)
        self.cfg = cfg
        self.vla = student
        self.teacher = teacher
        if cfg.trajectory_kd and cfg.teacher_targets != "cache" and teacher is None:
            raise ValueError(
                f"evodrive: trajectory_kd with teacher_targets={cfg.teacher_targets} needs the oracle (artifact 'oracle')"
            )
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            if teacher.cfg.num_poses != student.cfg.num_poses:
                raise ValueError(
                    f"evodrive: oracle num_poses={teacher.cfg.num_poses} != student num_poses={student.cfg.num_poses}; answers must match"
                )
            if teacher.cfg.plan_text != student.cfg.plan_text:
                raise ValueError(
                    f"evodrive: oracle plan_text={teacher.cfg.plan_text!r} != student plan_text="
                    f"{student.cfg.plan_text!r}; train the oracle with the student's plan_text (answers must match)"
                )
        self.required_extras = (
            (KEY_LOGITS, KEY_HIDDEN, KEY_LENGTH)
            if cfg.trajectory_kd and cfg.teacher_targets != "online"
            else ()
        )
        # the self-anchor: the student's vision encoder + merger as it is at fine-tuning start, frozen
        self.anchor = (
            copy.deepcopy(student.core.visual).requires_grad_(False).eval() if cfg.visual_kd else None
        )
        self.anchorformer = (
            AnchorFormer(student.core, cfg.anchor_layer) if cfg.visual_kd and cfg.anchor_weighting else None
        )
        self._gen = torch.Generator().manual_seed(0)
        self.seed = seed  # seeds the MC-dropout draws of teacher_targets="precompute" (the run's seed)

    def frozen(self) -> list[torch.nn.Module]:
        return [m for m in (self.anchor, self.teacher) if m is not None]

    def precompute_extras(
        self, data: Sequence[Scene], collate: Callable[[Sequence[Scene]], Batch], batch_size: int
    ) -> PrecomputedExtras:
        """teacher_targets="precompute": the oracle's soft targets for every training sample, once."""
        if not (self.cfg.trajectory_kd and self.cfg.teacher_targets == "precompute"):
            return {}
        from rich.progress import track

        assert self.teacher is not None
        device = next(self.teacher.parameters()).device
        chunks = [range(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]
        batches = (
            collate([data[j] for j in idx]).to(device)
            for idx in track(chunks, description="oracle targets", transient=True)
        )
        with torch.inference_mode():
            return cache_teacher_targets(self.teacher, batches, self.cfg, seed=self.seed)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        priv = batch.require_privileged("evodrive")
        core = self.vla.core
        enc = self.vla.encode_train(batch.inputs, priv.trajectory)
        assert enc.labels is not None
        pv, grid = core.image_inputs(batch.inputs.camera)
        img = core.visual_tokens(pv, grid)  # (B·T, D) student visual tokens (trainable encoder)
        out = core(enc, batch.inputs.camera, image_embeds=img)
        ce = answer_ce(out.logits, enc.labels)
        parts = {"ce": ce}
        total = self.cfg.ce_weight * ce
        if self.cfg.trajectory_kd:
            kd_logit, kd_hidden = self._trajectory_kd(batch, enc, out.logits, out.hidden)
            parts |= {"kd_logit": kd_logit, "kd_hidden": kd_hidden}
            total = total + self.cfg.logit_weight * kd_logit + self.cfg.hidden_weight * kd_hidden
        if self.anchor is not None:
            anchor_loss, diagnostics = self._anchor_loss(enc, pv, grid, img)
            parts |= {"anchor": anchor_loss, **diagnostics}
            total = total + self.cfg.anchor_weight * anchor_loss
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}

    def _trajectory_kd(
        self, batch: Batch, enc: Encoded, logits: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.teacher_targets != "online":
            t_logits, t_hidden, t_len = (
                batch.extras[KEY_LOGITS].float(),
                batch.extras[KEY_HIDDEN].float(),
                batch.extras[KEY_LENGTH],
            )
        else:
            assert self.teacher is not None
            t = teacher_targets(self.teacher, batch, self.cfg, self._gen)
            t_logits, t_hidden, t_len = t[KEY_LOGITS], t[KEY_HIDDEN], t[KEY_LENGTH]
        assert enc.labels is not None
        s_len = (enc.labels != -100).sum(1)
        if not torch.equal(s_len.cpu(), t_len.long().cpu()) or t_logits.shape[-1] != logits.shape[-1]:
            raise ValueError(
                f"evodrive: teacher answers have {t_len.tolist()} tokens (vocab {t_logits.shape[-1]}), the student's "
                f"{s_len.tolist()} (vocab {logits.shape[-1]}); teacher and student must share the tokenizer and num_poses "
                "(answer token counts must match)"
            )
        s_logits, s_hidden, target = answer_slices(enc, logits, hidden, t_logits.shape[1])
        if t_hidden.shape != s_hidden.shape:
            raise ValueError(
                f"evodrive: teacher hidden {tuple(t_hidden.shape)} != student {tuple(s_hidden.shape)}; use the same hidden size"
            )
        valid = target != -100  # (B, A)
        temp = self.cfg.temperature
        log_s = F.log_softmax(s_logits.float()[valid] / temp, dim=-1)
        p_t = F.softmax(t_logits.to(log_s)[valid] / temp, dim=-1)
        kd_logit = F.kl_div(log_s, p_t, reduction="batchmean") * temp * temp  # batchmean over answer tokens
        loss_fn = F.smooth_l1_loss if self.cfg.hidden_loss == "smooth_l1" else F.mse_loss
        return kd_logit, loss_fn(s_hidden.float()[valid], t_hidden.to(s_hidden.device)[valid])

    def _anchor_loss(
        self, enc: Encoded, pv: torch.Tensor, grid: torch.Tensor, img: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_a = Σ w_i mse_i / Σ w_i over the visual tokens; returns (L_a, diagnostics)."""
        assert self.anchor is not None
        core = self.vla.core
        with torch.no_grad():
            anchor_tok = core.visual_tokens(pv, grid, visual=self.anchor)
        b = enc.input_ids.shape[0]
        mse = (img - anchor_tok).pow(2).mean(-1).view(b, -1)  # (B, T)
        if self.anchorformer is None:
            return mse.mean(), {
                "anchor_w_mean": mse.new_ones(()),
                "anchor_share_max": 1.0 / mse.new_tensor(mse.numel()),
            }
        embeds, image_mask = core.embed(enc, anchor_tok)
        z = self.anchorformer.scores(
            embeds.detach(), enc.attention_mask, core.position_ids(enc, grid), image_mask
        )
        # Σ w·mse / Σ w with w = sigmoid(z) is Σ softmax(log w)·mse: computed that way it stays a weighted
        # mean of the token errors however small the weights get. Computed directly, the weights drifted
        # to ~1e-40 within 50 steps, the clamped normaliser made "all weights → 0" a zero loss, and the
        # anchor stopped acting (and denormal arithmetic made runs differ between processes).
        log_w = F.logsigmoid(z)
        share = torch.softmax(log_w.flatten(), dim=0).view_as(mse)
        # diagnostics: the mean weight, and the largest share one visual token has (1 / tokens = uniform)
        return (share * mse).sum(), {
            "anchor_w_mean": log_w.detach().exp().mean(),
            "anchor_share_max": share.max(),
        }

    def extra_state(self) -> dict[str, object]:
        return {"decode_stats": dict(self.vla.decode_stats)}


@register("method", "evodrive", EvoDriveConfig)
def build(
    cfg: EvoDriveConfig,
    student: Student,
    context: MethodContext | None = None,
    teacher: OracleTeacher | None = None,
) -> EvoDrive:
    """`teacher` given directly (tests) or loaded from the context artifact "oracle" when needed."""
    if not isinstance(student, VLAStudent):
        raise TypeError(
            f"evodrive trains the 'vla' student only, got {type(student).__name__}; use --student.name=vla"
        )
    ctx = context or MethodContext()
    if teacher is None and cfg.trajectory_kd and cfg.teacher_targets != "cache":
        teacher = OracleTeacher.load(
            ctx.artifact("oracle", "evodrive"),
            OracleConfig(num_poses=student.cfg.num_poses, plan_text=student.cfg.plan_text),
        )
    return EvoDrive(cfg, student, teacher, seed=ctx.seed)


# ----- teacher-quality gate (issue #16 pt 4): checked before the oracle teaches ------------------------
ORACLE_GATE_L2_RATIO = 0.5  # the oracle's ST-P3 L2 must be at most this fraction of the best student's


@torch.no_grad()
def teacher_forced_ce(
    model: VLAStudent | OracleTeacher, scenes: Sequence[Scene], batch_size: int = 16
) -> float:
    """Per-token CE [nats] of the GT answer under teacher forcing, averaged over every answer token of
    `scenes` (privileged part needed for the GT; the oracle also reads its privileged inputs). For the
    oracle this is its coarse pass — the plain CE, not EvoDrive's best-of-candidates selection, which
    picks by the GT and would flatter it."""
    from drivedistill.data.dataset import collate
    from drivedistill.models.vlm import IGNORE_INDEX

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(scenes), batch_size):
            batch = collate(list(scenes[start : start + batch_size])).to(device)
            if isinstance(model, OracleTeacher):
                enc = model.encode(batch)
                logits = model.teacher_forced(enc, model.images(batch), model.hint_ids(batch)).logits
            else:
                enc, out = model.teacher_forced(
                    batch.inputs, batch.require_privileged("teacher_forced_ce").trajectory
                )
                logits = out.logits
            assert enc.labels is not None
            labels = enc.labels[:, 1:].to(device)
            ce = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(ce)
            count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def oracle_quality(
    oracle: OracleTeacher,
    scenes: Sequence[Scene],
    student_reference: dict[str, float],
    *,
    pdms: bool = True,
    refine: bool = True,
    batch_size: int = 16,
    l2_ratio: float = ORACLE_GATE_L2_RATIO,
) -> dict[str, object]:
    """EvoDrive's teacher-quality gate: is the oracle a better planner than the students it will teach?

    oracle: a trained `OracleTeacher`; scenes: validation scenes **with** their privileged part (the
    oracle reads future frames / future ego status, the metrics the GT). student_reference:
    {"l2_stp3": ST-P3 average L2 [m] of the best imitation student (e.g. transfuser/imitation) on the same
    scenes, "ce": the VLA student's teacher-forced CE (`teacher_forced_ce(student, scenes)`)}; either
    may be missing, its check is then reported as None.

    Measures, on `scenes`: the oracle's free-running plan (greedy coarse → refined decoding — coarse only
    with `refine=False`, for an oracle trained with refine_prob 0 —, strict parse, fallback counted) scored open loop under the ST-P3 and UniAD protocols and (`pdms`) with NAVSIM
    PDMS; its teacher-forced CE (coarse pass, `teacher_forced_ce`). Gate: **pass** iff
    l2_stp3_avg ≤ l2_ratio × the reference L2 and ce < the reference CE (checks without a reference are
    skipped; with no reference at all the gate fails — it has nothing to beat).

    Returns {"num_scenes", "l2_stp3" {1s, 2s, 3s, avg}, "l2_uniad" {…}, "collision_stp3" {…} [%],
    "pdms" (mean sub-scores dict, or None), "ce_teacher_forced", "parse_failures" {count, decoded},
    "reference", "gate" {"l2_ratio", "l2_max", "l2_pass", "ce_pass", "pass"}, "protocols"}.
    """
    import dataclasses

    from drivedistill.data.dataset import collate
    from drivedistill.models.students.vla import poses_from_xy
    from drivedistill.train.evaluate import EvalConfig, evaluate_plans

    if not scenes:
        raise ValueError("oracle_quality: no scenes; pass the validation scenes with their privileged part")
    was_training = oracle.training
    oracle.eval()
    device = next(oracle.parameters()).device
    plans, failures = [], 0
    try:
        for start in range(0, len(scenes), batch_size):
            xy, _, failed = oracle.plan(collate(list(scenes[start : start + batch_size])).to(device), refine)
            plans.append(poses_from_xy(xy.cpu()).numpy())
            failures += int(failed.sum())
    finally:
        oracle.train(was_training)
    ecfg = dataclasses.replace(EvalConfig(device="cpu"), pdms=pdms, closed_loop=False)
    res = evaluate_plans(np.concatenate(plans).astype(np.float64), list(scenes), None, ecfg, None)
    ol = res["openloop"]
    l2 = float(ol["stp3"]["l2"]["avg"])
    ce = teacher_forced_ce(oracle, scenes, batch_size)
    ref_l2, ref_ce = student_reference.get("l2_stp3"), student_reference.get("ce")
    l2_max = None if ref_l2 is None else l2_ratio * float(ref_l2)
    l2_pass = None if l2_max is None else l2 <= l2_max
    ce_pass = None if ref_ce is None else ce < float(ref_ce)
    checks = [c for c in (l2_pass, ce_pass) if c is not None]
    return {
        "num_scenes": len(scenes),
        "l2_stp3": ol["stp3"]["l2"],
        "l2_uniad": ol["uniad"]["l2"],
        "collision_stp3": ol["stp3"]["collision"],
        "pdms": res["pdms"]["mean"] if "pdms" in res else None,
        "ce_teacher_forced": ce,
        "parse_failures": {"count": failures, "decoded": len(scenes)},
        "reference": dict(student_reference),
        "gate": {
            "l2_ratio": l2_ratio,
            "l2_max": l2_max,
            "l2_pass": l2_pass,
            "ce_pass": ce_pass,
            "pass": bool(checks) and all(checks),
        },
        "protocols": {
            "l2": "nuscenes_openloop stp3 (avg of the cumulative means at 1/2/3 s)",
            "pdms": res["pdms"]["protocol"] if "pdms" in res else None,
            "ce": "per-token CE of the GT answer, teacher-forced coarse pass",
        },
    }
