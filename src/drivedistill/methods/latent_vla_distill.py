"""Distilled LatentVLA: a fast student matches the VLM's latent-action distribution while planning (no VLM at inference).

A small head on a student feature (`query`: "plan_query", or the mean proposal query of iPad) predicts
the 12 latent action tokens in parallel, (B, 12, 16) logits. Loss:

    L = plan_weight · imitation(student) + kd_weight · T² · KL(softmax(teacher / T) ‖ softmax(head / T))
        [+ code_weight · CE(head, LAM codes)]

averaged over the 12 positions. Teacher logits come from the `latent_vla/teacher_logits` extra, cached
once by `models.teachers.vlm.cache_teacher_logits` (teacher-forced on the LAM codes), so training never
runs the VLM. The head is training-only: `deployable()` returns the student alone (ONNX-exportable,
no `transformers` needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext
from drivedistill.methods.imitation import ImitationConfig, imitation_losses
from drivedistill.models.latent_action.encode import EGO_CODES_KEY
from drivedistill.models.students.base import Student
from drivedistill.models.teachers.vlm import TEACHER_LOGITS_KEY
from drivedistill.registry import register
from drivedistill.types import Batch

QUERIES = ("auto", "plan_query", "proposal_mean")


@dataclass
class LatentVLADistillConfig:
    """KL distillation of the latent-action distribution into a student."""

    # K, the ego codebook size (must match the teacher's logits)
    num_codes: int = field(default=16, metadata=check(ge=1))
    sequence_length: int = field(default=12, metadata=check(ge=1))  # L, latent action tokens per sample
    # T of the softened distributions (Hinton KD; T² rescales the gradient)
    temperature: float = field(default=2.0, metadata=check(gt=0))
    kd_weight: float = field(default=1.0, metadata=check(ge=0))  # weight of T²·KL(teacher ‖ student)
    # optional cross-entropy to the LAM's own codes (0 = pure distillation)
    code_weight: float = field(default=0.0, metadata=check(ge=0))
    plan_weight: float = field(default=1.0, metadata=check(ge=0))  # imitation terms of the student
    # width of the latent-action head (dropped at export)
    head_hidden: int = field(default=256, metadata=check(ge=1))
    # which student feature the head reads: "plan_query" (the query the plan comes from), "proposal_mean"
    # (the mean of a multi-proposal student's queries, e.g. iPad's), "auto" (proposal_mean when the
    # student has proposals). iPad's plan_query is the query of the best-scored proposal: distilling into
    # it pulls whichever proposal wins towards one action, against the proposals' diversity.
    query: str = "auto"

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"LatentVLADistillConfig.temperature must be > 0, got {self.temperature}")
        if min(self.kd_weight, self.code_weight, self.plan_weight) < 0:
            raise ValueError("LatentVLADistillConfig: loss weights must be ≥ 0")
        if self.query not in QUERIES:
            raise ValueError(f"LatentVLADistillConfig.query must be one of {QUERIES}, got {self.query!r}")


def kd_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over the K classes, mean over the other dims."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean() * temperature**2


class LatentVLADistill(Method):
    """Student + a latent-action head trained against cached teacher logits."""

    required_extras = (TEACHER_LOGITS_KEY,)

    def __init__(self, cfg: LatentVLADistillConfig, student: Student) -> None:
        super().__init__(student)
        self.cfg = cfg
        d, shape = student.feature_dim, (cfg.sequence_length, cfg.num_codes)
        self.head = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, cfg.head_hidden),
            nn.GELU(),
            nn.Linear(cfg.head_hidden, shape[0] * shape[1]),
        )
        self.imitation = ImitationConfig()

    def action_logits(self, query: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, L, K) latent-action logits of the student."""
        return self.head(query).view(-1, self.cfg.sequence_length, self.cfg.num_codes)  # type: ignore[no-any-return]

    def distilled_query(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (B, D) student feature the latent-action head reads (`cfg.query`)."""
        choice = self.cfg.query
        if choice == "auto":
            choice = "proposal_mean" if "proposal_queries" in features else "plan_query"
        if choice == "proposal_mean":
            if "proposal_queries" not in features:
                raise ValueError(
                    "latent_vla_distill: method.query=proposal_mean needs a student with proposals "
                    "(features['proposal_queries'], e.g. ipad); use method.query=plan_query"
                )
            return features["proposal_queries"].mean(dim=1)
        return features["plan_query"]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        if TEACHER_LOGITS_KEY not in batch.extras:
            raise KeyError(
                f"latent_vla_distill: Batch.extras lacks {TEACHER_LOGITS_KEY!r}; cache it with "
                "models.teachers.vlm.cache_teacher_logits and pass it as a SceneDataset extra"
            )
        teacher = batch.extras[TEACHER_LOGITS_KEY]
        expected = (batch.inputs.batch_size, self.cfg.sequence_length, self.cfg.num_codes)
        if tuple(teacher.shape) != expected:
            raise ValueError(
                f"latent_vla_distill: teacher logits are {tuple(teacher.shape)}, expected {expected}; "
                "set method.num_codes / method.sequence_length to the teacher's"
            )
        out = self.student(batch.inputs)
        plan = imitation_losses(out, batch, self.imitation, self.student)
        logits = self.action_logits(self.distilled_query(out.features))
        kd = kd_kl(teacher, logits, self.cfg.temperature)
        total = self.cfg.plan_weight * plan["loss"] + self.cfg.kd_weight * kd
        # the imitation parts (iPad: + proposal, score), then the distillation's
        parts = {**{k: v for k, v in plan.items() if k != "loss"}, "kd": kd.detach()}
        agree = (logits.argmax(-1) == teacher.argmax(-1)).float().mean()
        if self.cfg.code_weight > 0:
            if EGO_CODES_KEY not in batch.extras:
                raise KeyError(
                    f"latent_vla_distill: code_weight > 0 needs the {EGO_CODES_KEY!r} extra (LAM codes)"
                )
            ce = F.cross_entropy(logits.flatten(0, 1), batch.extras[EGO_CODES_KEY].long().flatten())
            total = total + self.cfg.code_weight * ce
            parts["code_ce"] = ce.detach()
        return {"loss": total, **parts, "teacher_agreement": agree}


@register("method", "latent_vla_distill", LatentVLADistillConfig)
def build(cfg: LatentVLADistillConfig, student: Student, context: MethodContext) -> LatentVLADistill:
    return LatentVLADistill(cfg, student)
