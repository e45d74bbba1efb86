"""LatentVLA with the VLM in the loop: frozen latent-action VLM features fused into the planner's scene tokens.

Per sample, the frozen teacher (models/teachers/vlm.py) reads the camera + instruction and greedily
decodes its 12 latent action tokens; its last hidden states of the image tokens and of the action tokens
are pooled by multi-head attention with learned queries (`pool_queries` tokens), projected to the
student's width, and the student's scene (BEV) tokens cross-attend to them as keys/values (residual).
A plan-query decoder over the fused tokens refines the student's plan (residual, zero-initialised):

    scene' = scene + CrossAttn(q = scene, kv = Pool(VLM states))
    plan   = student_plan + MLP(Decoder(plan_query, scene'))

Loss: imitation of the refined plan + `student_weight` × the student's own imitation terms (for iPad:
its proposal and score losses). The deployable module (`LatentVLAPlanner`) runs the VLM at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext, planning_loss
from drivedistill.methods.imitation import ImitationConfig, imitation_losses
from drivedistill.models.students.base import Student
from drivedistill.models.teachers.vlm import VLMTeacher, load_teacher
from drivedistill.registry import register
from drivedistill.types import NUM_FUTURE, AgentInputBatch, Batch, PlanOutput


@dataclass
class LatentVLAConfig:
    """Fusion of the frozen latent-action VLM into a student."""

    teacher_artifact: str = "teacher/vlm"  # MethodContext artifact: a directory saved by VLMTeacher.save
    # learned queries of the attention pooling (VLM tokens → 8 fused tokens)
    pool_queries: int = field(default=8, metadata=check(ge=1))
    # heads of the pooling attention (divides the VLM hidden size)
    pool_heads: int = field(default=4, metadata=check(ge=1))
    # heads of the scene-token cross-attention (divides the student's D)
    fusion_heads: int = field(default=4, metadata=check(ge=1))
    # plan-query layers over the fused scene tokens
    decoder_layers: int = field(default=1, metadata=check(ge=1))
    plan_weight: float = field(default=1.0, metadata=check(ge=0))  # L1 of the refined plan
    # the student's own imitation terms (keeps its plan/proposals trained)
    student_weight: float = field(default=0.5, metadata=check(ge=0))

    def __post_init__(self) -> None:
        if self.pool_queries < 1 or self.decoder_layers < 1:
            raise ValueError("LatentVLAConfig: pool_queries and decoder_layers must be ≥ 1")


class AttentionPool(nn.Module):
    """Multi-head attention pooling: (B, N, Din) tokens → (B, Q, Dout) with Q learned queries."""

    def __init__(self, dim_in: int, dim_out: int, num_queries: int, heads: int) -> None:
        super().__init__()
        if dim_in % heads:
            raise ValueError(f"LatentVLAConfig.pool_heads={heads} must divide the VLM hidden size {dim_in}")
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, dim_in))
        self.norm = nn.LayerNorm(dim_in)
        self.attn = nn.MultiheadAttention(dim_in, heads, batch_first=True)
        self.proj = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, dim_out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm(tokens)
        q = self.queries[None].expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attn(q, kv, kv, need_weights=False)
        return self.proj(pooled + q)  # type: ignore[no-any-return]


class LatentVLAPlanner(Student):
    """Deployable: student + frozen VLM teacher + pooling/fusion/refinement. Reads `AgentInput` only.

    features: the student's own, then "plan_query" (B, D) refined query, "scene_tokens" (B, N, D) fused, "student_trajectory"
    (B, 8, 3), "vlm_pooled" (B, Q, D), "vlm_codes" (B, 12) the teacher's greedy latent actions.
    """

    def __init__(self, cfg: LatentVLAConfig, student: Student, teacher: VLMTeacher) -> None:
        super().__init__()
        d, dv = student.feature_dim, teacher.core.hidden_size
        if d % cfg.fusion_heads:
            raise ValueError(
                f"LatentVLAConfig.fusion_heads={cfg.fusion_heads} must divide the student's feature_dim {d}"
            )
        self.feature_dim = d
        self.student = student
        self.teacher = teacher
        self.pool = AttentionPool(dv, d, cfg.pool_queries, cfg.pool_heads)
        self.fusion_norm = nn.LayerNorm(d)
        self.fusion = nn.MultiheadAttention(d, cfg.fusion_heads, batch_first=True)
        layer = nn.TransformerDecoderLayer(
            d, cfg.fusion_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers)
        out_layer = nn.Linear(d, NUM_FUTURE * 3)
        nn.init.zeros_(out_layer.weight)  # starts as the student's plan
        nn.init.zeros_(out_layer.bias)
        self.head = nn.Sequential(nn.LayerNorm(d), out_layer)
        self.freeze_teacher()

    def freeze_teacher(self) -> None:
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> LatentVLAPlanner:
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode (no dropout, no stat updates)
        return self

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        out = self.student(inputs)
        with torch.no_grad():
            vlm = self.teacher.features(inputs)
        pooled = self.pool(torch.cat([vlm.visual, vlm.actions], 1))  # (B, Q, D)
        scene = out.features["scene_tokens"]
        fused = scene + self.fusion(self.fusion_norm(scene), pooled, pooled, need_weights=False)[0]
        query = self.decoder(out.features["plan_query"][:, None], fused)[:, 0]
        delta = self.head(query).view(-1, NUM_FUTURE, 3)
        features = {
            **out.features,  # the student's own (e.g. iPad proposals), overridden below
            "plan_query": query,
            "scene_tokens": fused,
            "student_trajectory": out.trajectory,
            "vlm_pooled": pooled,
            "vlm_codes": vlm.codes,
        }
        return PlanOutput(out.trajectory + delta, features)


class LatentVLA(Method):
    """Trains the student + fusion with the frozen VLM in the loop."""

    def __init__(self, cfg: LatentVLAConfig, student: Student, teacher: VLMTeacher) -> None:
        super().__init__(student)
        self.cfg = cfg
        self.planner = LatentVLAPlanner(cfg, student, teacher)
        self.imitation = ImitationConfig()

    def frozen(self) -> list[nn.Module]:
        return [self.planner.teacher]

    def deployable(self) -> Student:
        return self.planner

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        priv = batch.require_privileged("latent_vla (imitation)")
        out = self.planner(batch.inputs)
        refined = planning_loss(out.trajectory, priv.trajectory, priv.valid)
        student = imitation_losses(
            PlanOutput(out.features["student_trajectory"], out.features), batch, self.imitation, self.student
        )
        total = self.cfg.plan_weight * refined + self.cfg.student_weight * student["loss"]
        parts = {k: v for k, v in student.items() if k not in ("loss", "imitation")}  # e.g. bev_semantic
        return {
            "loss": total,
            "imitation": refined.detach(),
            "student_imitation": student["imitation"],
            **parts,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"teacher_params": sum(p.numel() for p in self.planner.teacher.parameters())}


@register("method", "latent_vla", LatentVLAConfig)
def build(cfg: LatentVLAConfig, student: Student, context: MethodContext) -> LatentVLA:
    """Loads the trained teacher from the `cfg.teacher_artifact` artifact of the context."""
    teacher = load_teacher(context.artifact(cfg.teacher_artifact, "latent_vla")).to(context.device)
    return LatentVLA(cfg, student, teacher)
