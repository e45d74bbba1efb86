"""TransFuser-style student: camera + LiDAR BEV backbones fused by a transformer, one plan query → 8 poses.

A compact reading of TransFuser / Latent TransFuser (Chitta et al., NAVSIM baseline): the two sensor
streams go through their own timm backbone (`models/backbones.py`), their pooled feature maps become
tokens (the BEV stream is the LiDAR height histogram of `AgentInput.bev`, world/lidar.py; the labelled
BEV is privileged), transformer encoder layers fuse them (late fusion instead of TransFuser's multi-scale GPT
blocks — cheaper on a CPU, the same inputs), and a learnt plan query, conditioned on the command (and on
the ego status when `use_ego_status`), cross-attends to the fused tokens before an MLP decodes the plan —
with ego status, as a residual on the constant-speed plan of the ego status (`cv_prior`, straight ahead
unless `cv_prior_turns`; the head's last layer starts at zero).

Defaults train on a CPU (regnety_002, D = 128); paper scale is `--student.camera_backbone=resnet34
--student.bev_backbone=resnet34 --student.hidden_dim=256 --student.num_fusion_layers=4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from drivedistill.config import check
from drivedistill.models.backbones import (
    PerceptionConfig,
    PoseHead,
    SceneEncoder,
    transformer_layer,
)
from drivedistill.models.students.base import Student
from drivedistill.models.students.constant_velocity import constant_velocity_prior
from drivedistill.registry import register
from drivedistill.types import AgentInputBatch, Batch, PlanOutput


@dataclass
class TransfuserConfig(PerceptionConfig):
    """Perception fields (see PerceptionConfig) plus the planning decoder."""

    num_decoder_layers: int = field(
        default=2, metadata=check(ge=1)
    )  # plan-query cross-attention layers over the scene tokens


class Transfuser(Student):
    """features: "plan_query" (B, D), "scene_tokens" (B, Nc + Nb, D), "ego_token" (B, D)."""

    def __init__(self, cfg: TransfuserConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.cfg = cfg
        self.feature_dim = d
        self.encoder = SceneEncoder(cfg)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.decoder = nn.ModuleList(
            transformer_layer(d, cfg.num_heads, cfg.dropout, decoder=True)
            for _ in range(cfg.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = PoseHead(d)
        self.prior = cfg.cv_prior and cfg.use_ego_status
        if self.prior:  # start exactly at the constant-velocity plan; learn the correction
            last = self.head.mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        scene, ego = self.encoder(inputs)  # (B, N, D), (B, D)
        q = self.query + ego.unsqueeze(1)  # (B, 1, D)
        for layer in self.decoder:
            q = layer(q, scene)
        plan_query = self.norm(q[:, 0])
        plan = self.head(plan_query)
        if self.prior:
            plan = plan + constant_velocity_prior(inputs, self.cfg.cv_prior_turns)
        features = {"plan_query": plan_query, "scene_tokens": scene, "ego_token": ego}
        return PlanOutput(plan, {**features, **self.encoder.training_features(scene)})

    def auxiliary_losses(self, out: PlanOutput, batch: Batch) -> dict[str, torch.Tensor]:
        return self.encoder.auxiliary_losses(out, batch)


@register("student", "transfuser", TransfuserConfig)
def build(cfg: TransfuserConfig) -> Transfuser:
    return Transfuser(cfg)
