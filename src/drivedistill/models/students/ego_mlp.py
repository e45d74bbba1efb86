"""Ego-status MLP (AD-MLP): past poses, speed, acceleration, yaw rate and command → plan. No perception.

The baseline every open-loop table needs (Zhai et al., "Rethinking the Open-Loop Evaluation of
End-to-End Autonomous Driving in nuScenes"): it shows how much of a metric the ego-status shortcut
explains. It cannot run without ego status, so `use_ego_status=False` is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from drivedistill.config import ConfigError, check
from drivedistill.models.backbones import EGO_VECTOR_DIM, NUM_COMMANDS, PoseHead, ego_vector
from drivedistill.models.students.base import Student, StudentConfig
from drivedistill.registry import register
from drivedistill.types import AgentInputBatch, PlanOutput


@dataclass
class EgoMlpConfig(StudentConfig):
    """AD-MLP: an MLP over the flattened ego history + status + one-hot command."""

    hidden_dim: int = field(default=256, metadata=check(ge=1))  # D of "plan_query"
    num_layers: int = field(default=3, metadata=check(ge=1))  # hidden layers (AD-MLP: 3 × 512)
    dropout: float = field(default=0.0, metadata=check(ge=0, lt=1))

    def __post_init__(self) -> None:
        if not self.use_ego_status:
            raise ConfigError("ego_mlp reads only ego status; use_ego_status=False leaves it no input")
        if self.num_layers < 1:
            raise ConfigError(f"num_layers={self.num_layers} must be >= 1")


class EgoMlp(Student):
    """features: "plan_query" (B, D) last hidden layer, "scene_tokens" (B, 1, D) the same vector."""

    def __init__(self, cfg: EgoMlpConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_dim = cfg.hidden_dim
        layers: list[nn.Module] = []
        width = EGO_VECTOR_DIM + NUM_COMMANDS
        for _ in range(cfg.num_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim), nn.GELU()]
            layers += [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
            width = cfg.hidden_dim
        self.mlp = nn.Sequential(*layers)
        self.head = PoseHead(cfg.hidden_dim)

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        command = nn.functional.one_hot(inputs.command, NUM_COMMANDS).to(inputs.ego_status.dtype)
        h = self.mlp(torch.cat([ego_vector(inputs), command], dim=1))  # (B, D)
        return PlanOutput(self.head(h), {"plan_query": h, "scene_tokens": h.unsqueeze(1)})


@register("student", "ego_mlp", EgoMlpConfig)
def build(cfg: EgoMlpConfig) -> EgoMlp:
    return EgoMlp(cfg)
