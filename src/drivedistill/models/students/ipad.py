"""iPad-style student: K trajectory proposals refined iteratively against image/BEV tokens, then scored.

After iPad (Guo et al., "Iterative Proposal-centric End-to-End Autonomous Driving"): K learnt proposal
queries (conditioned on the command and, with `use_ego_status`, on the ego status) are refined over
`num_iterations` rounds. In each round every query cross-attends to the fused camera + LiDAR-BEV tokens,
self-attends to the other proposals, and decodes a trajectory; the trajectory is embedded back into the
query for the next round (the proposal-centric loop). A score head rates the final proposals; the best
scored one is the plan.

Training needs its own loss parts — winner-takes-all L1 over proposals at every iteration plus a score
classification — which live in `methods/imitation.py::imitation_losses`, keyed on the presence of
"proposals" in the features, so that every method reusing the imitation term trains iPad correctly.

features: "plan_query" (B, D) the best proposal's query, "proposal_queries" (B, K, D) all of them,
"scene_tokens" (B, N, D), "proposals"
(B, K, 8, 3), "proposal_scores" (B, K) logits, "proposals_per_iteration" (B, I, K, 8, 3).
Paper scale: `--student.num_proposals=64 --student.hidden_dim=256 --student.camera_backbone=resnet34`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from drivedistill.config import ConfigError, check
from drivedistill.models.backbones import (
    POSITION_SCALE,
    PerceptionConfig,
    PoseHead,
    SceneEncoder,
    transformer_layer,
)
from drivedistill.models.students.base import Student
from drivedistill.models.students.constant_velocity import constant_velocity_prior
from drivedistill.registry import register
from drivedistill.types import NUM_FUTURE, AgentInputBatch, Batch, PlanOutput


@dataclass
class IpadConfig(PerceptionConfig):
    """Perception fields (see PerceptionConfig) plus the proposal refinement."""

    num_proposals: int = field(default=8, metadata=check(ge=1))  # K
    num_iterations: int = field(
        default=3, metadata=check(ge=1)
    )  # refinement rounds (each: one decoder layer + a pose head)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_proposals < 1 or self.num_iterations < 1:
            raise ConfigError(
                f"num_proposals={self.num_proposals} and num_iterations={self.num_iterations} must be >= 1"
            )


class Ipad(Student):
    """Proposal-centric planner; see the module docstring for the features it exposes."""

    def __init__(self, cfg: IpadConfig) -> None:
        super().__init__()
        d, k = cfg.hidden_dim, cfg.num_proposals
        self.cfg = cfg
        self.feature_dim = d
        self.encoder = SceneEncoder(cfg)
        self.queries = nn.Parameter(torch.zeros(1, k, d))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.layers = nn.ModuleList(
            transformer_layer(d, cfg.num_heads, cfg.dropout, decoder=True) for _ in range(cfg.num_iterations)
        )
        self.heads = nn.ModuleList(PoseHead(d) for _ in range(cfg.num_iterations))
        # embeds a decoded proposal (8 poses, scaled) back into its query for the next round
        self.feedback = nn.ModuleList(
            nn.Sequential(nn.Linear(NUM_FUTURE * 3, d), nn.GELU(), nn.Linear(d, d))
            for _ in range(cfg.num_iterations - 1)
        )
        self.norm = nn.LayerNorm(d)
        self.prior = cfg.cv_prior and cfg.use_ego_status  # proposals = CV arc + learnt offsets
        self.score = nn.Sequential(nn.Linear(d + NUM_FUTURE * 3, d), nn.GELU(), nn.Linear(d, 1))

    @staticmethod
    def _scaled(poses: torch.Tensor) -> torch.Tensor:
        """(B, K, 8, 3) → (B, K, 24) poses with x, y / POSITION_SCALE, yaw / π (roughly unit scale)."""
        scale = poses.new_tensor([POSITION_SCALE, POSITION_SCALE, torch.pi])
        return (poses / scale).flatten(2)

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        scene, ego = self.encoder(inputs)  # (B, N, D), (B, D)
        q = self.queries + ego.unsqueeze(1)  # (B, K, D)
        per_iteration = []
        prior = (
            constant_velocity_prior(inputs, self.cfg.cv_prior_turns)[:, None] if self.prior else None
        )  # (B, 1, 8, 3)
        for i, (layer, head) in enumerate(zip(self.layers, self.heads)):
            q = layer(q, scene)
            poses = head(q)  # (B, K, 8, 3)
            if prior is not None:
                poses = poses + prior
            per_iteration.append(poses)
            if i < len(self.feedback):
                q = q + self.feedback[i](self._scaled(poses.detach()))
        q = self.norm(q)
        proposals = per_iteration[-1]
        scores = self.score(torch.cat([q, self._scaled(proposals.detach())], dim=-1)).squeeze(-1)  # (B, K)
        best = scores.argmax(dim=1)  # (B,)
        trajectory = proposals.gather(1, best.view(-1, 1, 1, 1).expand(-1, 1, NUM_FUTURE, 3)).squeeze(1)
        plan_query = q.gather(1, best.view(-1, 1, 1).expand(-1, 1, q.shape[-1])).squeeze(1)
        return PlanOutput(
            trajectory,
            {
                "plan_query": plan_query,
                "proposal_queries": q,
                "scene_tokens": scene,
                "proposals": proposals,
                "proposal_scores": scores,
                "proposals_per_iteration": torch.stack(per_iteration, dim=1),
                **self.encoder.training_features(scene),
            },
        )

    def auxiliary_losses(self, out: PlanOutput, batch: Batch) -> dict[str, torch.Tensor]:
        return self.encoder.auxiliary_losses(out, batch)


@register("student", "ipad", IpadConfig)
def build(cfg: IpadConfig) -> Ipad:
    return Ipad(cfg)
