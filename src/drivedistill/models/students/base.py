"""The student interface: a deployable planner that reads `AgentInputBatch` only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from drivedistill.types import AgentInputBatch, Batch, PlanOutput


@dataclass
class StudentConfig:
    """Fields every student config shares (subclass it; add your own below)."""

    use_ego_status: bool = True  # feed speed/acceleration/yaw rate + past poses; False = perception only


class Student(nn.Module):
    """Base class. Subclasses set `feature_dim` (D of "plan_query") and implement `forward`.

    Contract (checked by tests/test_students_contract.py for every registered student):
    - forward(inputs: AgentInputBatch) -> PlanOutput with trajectory (B, 8, 3) and features
      "plan_query" (B, D) and "scene_tokens" (B, N, D);
    - never reads privileged information (it is not in AgentInputBatch);
    - heads for a recipe's auxiliary losses live in methods, not here; the student's own auxiliary
      training target (TransFuser's BEV semantics, the same under every method) is `auxiliary_losses`,
      which each method's imitation term adds (`methods.imitation.imitation_losses`).
    """

    feature_dim: int = 0
    # the method that trains this student on its own (contract tests backpropagate its "loss")
    default_method: str = "imitation"

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def auxiliary_losses(self, out: PlanOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """The student's own auxiliary losses on its training forward `out`: {"loss": weighted sum,
        <part>: detached value, ...}, or {} (the default: none)."""
        del out, batch
        return {}

    @torch.no_grad()
    def plan(self, inputs: AgentInputBatch) -> torch.Tensor:
        """(B, 8, 3) plan in eval mode, for metrics and closed loop."""
        was_training = self.training
        self.eval()
        out = self(inputs).trajectory
        self.train(was_training)
        return out
