"""Supervised fine-tuning of the VLA student: next-token cross-entropy on the plan text (EvoDriveVLA's base)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext
from drivedistill.models.students.base import Student
from drivedistill.models.vlm import IGNORE_INDEX
from drivedistill.registry import register
from drivedistill.types import Batch


@dataclass
class VLASFTConfig:
    # CE label smoothing on the answer tokens
    label_smoothing: float = field(default=0.0, metadata=check(ge=0, le=1))


def answer_ce(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token CE over answer tokens. logits (B, L, V), labels (B, L) with -100 off the answer."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


class VLASFT(Method):
    """CE of the GT plan text under teacher forcing; the whole VLA (vision encoder included) trains."""

    def __init__(self, cfg: VLASFTConfig, student: Student) -> None:
        from drivedistill.models.students.vla import VLAStudent

        if not isinstance(student, VLAStudent):
            raise TypeError(
                f"vla_sft trains the 'vla' student only, got {type(student).__name__}; use --student.name=vla"
            )
        super().__init__(student)
        self.cfg = cfg
        self.vla = student

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        priv = batch.require_privileged("vla_sft")
        enc, out = self.vla.teacher_forced(batch.inputs, priv.trajectory)
        assert enc.labels is not None
        ce = answer_ce(out.logits, enc.labels, self.cfg.label_smoothing)
        return {"loss": ce, "ce": ce.detach()}


@register("method", "vla_sft", VLASFTConfig)
def build(cfg: VLASFTConfig, student: Student, context: MethodContext | None = None) -> VLASFT:
    return VLASFT(cfg, student)
