"""Imitation (the baseline): L1 to the expert plan; for iPad also winner-takes-all + proposal scoring.

`imitation_losses(out, batch, cfg)` is the imitation term every method reuses (vlm_ad, latent_vla, ...):
it reads the student's `PlanOutput` and decides by its features what to supervise —
- always: "imitation" = L1 between the plan and the expert future (`planning_loss`, valid steps only);
- with "proposals" (B, K, 8, 3) and "proposal_scores" (B, K) in the features (iPad):
  "proposal" = winner-takes-all L1 (the proposal closest to the expert, min over K) averaged over the
  refinement iterations ("proposals_per_iteration" (B, I, K, 8, 3) when present), and
  "score" = cross-entropy of the scores against the index of that winner. The plan itself (the best
  scored proposal) is then logged but not optimised: pulling it to the expert would collapse the
  proposals onto one mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext, planning_loss
from drivedistill.models.students.base import Student
from drivedistill.registry import register
from drivedistill.types import Batch, PlanOutput


@dataclass
class ImitationConfig:
    """Weights of the imitation terms."""

    # L1 plan loss (or iPad's winner-takes-all proposal loss)
    plan_weight: float = field(default=1.0, metadata=check(ge=0))
    score_weight: float = field(default=1.0, metadata=check(ge=0))  # iPad proposal-score cross-entropy


def _per_sample_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """pred (B, ..., T, 3), target (B, T, 3), valid (B, T) → (B, ...) mean L1 over valid steps and x, y, yaw."""
    extra = pred.ndim - target.ndim
    shape = (target.shape[0],) + (1,) * extra + tuple(target.shape[1:])
    w = valid.to(pred.dtype).view(*shape[:-1], 1)
    err = ((pred - target.view(shape)).abs() * w).sum(dim=(-1, -2))
    return err / (w.sum(dim=(-1, -2)) * pred.shape[-1]).clamp_min(1.0)


def imitation_losses(
    out: PlanOutput, batch: Batch, cfg: ImitationConfig, student: Student | None = None
) -> dict[str, torch.Tensor]:
    """{"loss": weighted total, "imitation": plan L1 (detached), ["proposal", "score"]} (parts detached),
    plus the `student`'s own auxiliary losses (`Student.auxiliary_losses`, e.g. "bev_semantic") when given."""
    out_losses = _plan_losses(out, batch, cfg)
    aux = student.auxiliary_losses(out, batch) if student is not None else {}
    if aux:
        out_losses = {**out_losses, **aux, "loss": out_losses["loss"] + aux["loss"]}
    return out_losses


def _plan_losses(out: PlanOutput, batch: Batch, cfg: ImitationConfig) -> dict[str, torch.Tensor]:
    priv = batch.require_privileged("imitation loss")
    target, valid = priv.trajectory, priv.valid
    plan_l1 = planning_loss(out.trajectory, target, valid)
    if "proposals" not in out.features:
        return {"loss": cfg.plan_weight * plan_l1, "imitation": plan_l1.detach()}
    proposals = out.features["proposals"]  # (B, K, 8, 3)
    per_iteration = out.features.get("proposals_per_iteration", proposals[:, None])  # (B, I, K, 8, 3)
    errors = _per_sample_l1(per_iteration, target, valid)  # (B, I, K)
    wta = errors.min(dim=-1).values.mean()
    winner = _per_sample_l1(proposals.detach(), target, valid).argmin(dim=1)  # (B,)
    score = nn.functional.cross_entropy(out.features["proposal_scores"], winner)
    total = cfg.plan_weight * wta + cfg.score_weight * score
    return {"loss": total, "imitation": plan_l1.detach(), "proposal": wta.detach(), "score": score.detach()}


class Imitation(Method):
    """Trains the student alone on the expert's future trajectory."""

    def __init__(self, cfg: ImitationConfig, student: Student) -> None:
        super().__init__(student)
        self.cfg = cfg

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return imitation_losses(self.student(batch.inputs), batch, self.cfg, self.student)


@register("method", "imitation", ImitationConfig)
def build(cfg: ImitationConfig, student: Student, context: MethodContext) -> Imitation:
    return Imitation(cfg, student)
