"""The method interface: what a student is trained with.

A method wraps one student plus the training-only parts (auxiliary heads, frozen teachers) and returns
named losses. Only `trainable()` is optimised and DDP-wrapped; frozen teachers stay outside.

    method = registry.build("method", "vlm_ad", cfg, student=student, context=ctx)
    losses = method.losses(batch)          # {"loss": total, "imitation": ..., "align": ...}
    deployable = method.deployable()       # the student alone (heads dropped) for eval/export
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drivedistill.models.students.base import Student
from drivedistill.types import NUM_FUTURE, Batch, Scene

# per-sample arrays a method computes once before training: name → {token: array}
PrecomputedExtras = dict[str, dict[str, Any]]


@dataclass
class MethodContext:
    """What a method may need besides its student: artifacts of earlier stages (teacher checkpoints,
    annotation / latent-code caches), keyed by name, and the device."""

    artifacts: Mapping[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0

    def artifact(self, key: str, who: str) -> Path:
        if key not in self.artifacts:
            raise KeyError(
                f"{who} needs the artifact '{key}' (produced by an earlier stage); available: {sorted(self.artifacts)}. "
                "Run the stage that produces it first (see `drivedistill run`)."
            )
        return Path(self.artifacts[key])


def planning_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 over (x, y, yaw) of valid future steps, mean over valid steps (TransFuser's imitation loss).

    pred, target: (B, T, 3); valid: (B, T) bool. Only the first NUM_FUTURE steps are used.
    """
    pred, target, valid = pred[:, :NUM_FUTURE], target[:, :NUM_FUTURE], valid[:, :NUM_FUTURE]
    w = valid.to(pred.dtype).unsqueeze(-1)
    return ((pred - target).abs() * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


class Method(nn.Module):
    """Base class: holds `student` and training-only modules; implements `losses`."""

    # keys this method needs in `Batch.extras` (cached targets of earlier stages)
    required_extras: tuple[str, ...] = ()

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frozen(self) -> list[nn.Module]:
        """Frozen teachers (kept in eval mode, never wrapped by DDP, no gradients)."""
        return []

    def deployable(self) -> Student:
        """What runs at inference: the student alone."""
        return self.student

    def extra_state(self) -> dict[str, Any]:
        """Extra metadata saved with the checkpoint."""
        return {}

    def precompute_extras(
        self, data: Sequence[Scene], collate: Callable[[Sequence[Scene]], Batch], batch_size: int
    ) -> PrecomputedExtras:
        """Per-sample targets computed once before training (e.g. a frozen teacher's outputs), merged
        into every training batch's extras by `train.run.train_student`. Default: none."""
        return {}
