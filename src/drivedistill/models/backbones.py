"""Perception trunk shared by the camera students: timm image backbones → tokens, ego/command encoding.

    tok = ImageTokenizer("regnety_002", in_chans=3, dim=128, grid=(4, 8))
    tokens = tok(images)                    # (B, 3, H, W) in [0, 1] → (B, 4·8, 128)

Backbones are created with `pretrained=False` (nothing is downloaded) and `features_only=True`; one
feature stage is kept (`out_index`) and pooled to a fixed token grid, so the positional embedding does
not depend on the input size. `PerceptionConfig` holds the fields TransFuser and iPad share, flat, so
that overrides read `--student.hidden_dim=256`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from drivedistill.config import ConfigError, check
from drivedistill.models.students.base import StudentConfig
from drivedistill.types import NUM_FUTURE, NUM_PAST, AgentInputBatch, Batch, Command, PlanOutput

# Fixed input scales (not learnt, not data-dependent, so a checkpoint means the same on any data set).
POSITION_SCALE = 10.0  # [m] past poses are divided by this
SPEED_SCALE = 10.0  # [m/s]
ACCEL_SCALE = 3.0  # [m/s^2]
YAW_RATE_SCALE = 0.5  # [rad/s]
NUM_COMMANDS = len(Command)
EGO_VECTOR_DIM = NUM_PAST * 3 + 3  # flattened history + status
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PerceptionConfig(StudentConfig):
    """Camera + BEV perception shared by `transfuser` and `ipad` (paper scale: resnet34, hidden 256)."""

    camera_backbone: str = "regnety_002"  # any timm model name with features_only support
    bev_backbone: str = "regnety_002"
    backbone_out_index: int = field(
        default=3, metadata=check(ge=0)
    )  # feature stage kept (regnety: 3 → stride 16, 4 → stride 32)
    camera_grid: tuple[int, int] = field(
        default=(4, 8), metadata=check(ge=1)
    )  # camera tokens after pooling (rows, cols)
    bev_grid: tuple[int, int] = field(default=(4, 4), metadata=check(ge=1))  # BEV tokens after pooling
    bev_channels: int = field(
        default=0, metadata=check(ge=0)
    )  # channels of the BEV raster; 0 = take them from the data at training time
    hidden_dim: int = field(default=128, metadata=check(ge=1))  # D of every token and of "plan_query"
    num_heads: int = field(default=4, metadata=check(ge=1))
    num_fusion_layers: int = field(
        default=2, metadata=check(ge=0)
    )  # transformer encoder layers over camera + BEV (+ ego) tokens
    dropout: float = field(default=0.0, metadata=check(ge=0, lt=1))
    # with use_ego_status: every decoded plan is a learnt residual on a constant-velocity plan of the ego
    # status (an anchor, as proposal/anchor planners use); without ego status it has no input → off
    cv_prior: bool = True
    # the prior keeps the yaw rate for 4 s (an arc) or drives straight at the current speed (default: the
    # arc over-steers on curves and feeds back on its own yaw rate in closed loop — docs/LOG.md)
    cv_prior_turns: bool = False
    # with use_ego_status: also the past poses (False: speed, acceleration, yaw rate only, as NAVSIM's
    # TransFuser reads them — a planner that sees its own past can copy it instead of the road)
    use_ego_history: bool = True
    # TransFuser's auxiliary BEV semantic loss (NAVSIM's TransFuser trains with one): weight of the BCE
    # between a `bev_semantic_grid`² map decoded from the scene tokens and the privileged labelled BEV
    # (drivable area, lane markings, vehicle boxes) pooled to that grid — a training target only, the
    # inputs stay the sensors; 0 = off (no head). Every method's imitation term adds it (docs/LOG.md)
    bev_semantic_weight: float = field(default=0.0, metadata=check(ge=0))
    bev_semantic_grid: int = field(default=8, metadata=check(ge=1))

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads}; "
                "change --student.hidden_dim or --student.num_heads"
            )
        for name in ("camera_grid", "bev_grid"):
            if min(getattr(self, name)) < 1:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be positive, e.g. --student.{name}=[4,8]"
                )
        if self.bev_channels < 0:
            raise ConfigError(f"bev_channels={self.bev_channels} must be >= 0 (0 = from the data)")


def ego_vector(inputs: AgentInputBatch, history: bool = True) -> torch.Tensor:
    """(B, EGO_VECTOR_DIM) scaled past poses (B, 4·3; zeros when not `history`) then speed, acceleration,
    yaw rate (B, 3)."""
    if history:
        hist = inputs.ego_history.clone()
        hist[..., :2] = hist[..., :2] / POSITION_SCALE
    else:
        hist = torch.zeros_like(inputs.ego_history)
    scale = inputs.ego_status.new_tensor([SPEED_SCALE, ACCEL_SCALE, YAW_RATE_SCALE])
    return torch.cat([hist.flatten(1), inputs.ego_status / scale], dim=1)


def transformer_layer(dim: int, heads: int, dropout: float, decoder: bool = False) -> nn.Module:
    """Pre-norm transformer layer, batch-first, GELU, 4× MLP."""
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    return cls(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)


class ImageTokenizer(nn.Module):
    """timm backbone (one feature stage) → 1×1 projection → adaptive pooling → tokens + positions.

    Input (B, C, H, W) float in [0, 1]; RGB inputs are ImageNet-normalised. Output (B, rows·cols, dim).
    """

    def __init__(self, name: str, in_chans: int, dim: int, grid: tuple[int, int], out_index: int) -> None:
        super().__init__()
        import timm

        try:
            self.backbone = timm.create_model(
                name, pretrained=False, features_only=True, in_chans=in_chans, out_indices=(out_index,)
            )
        except (RuntimeError, IndexError) as e:
            raise ConfigError(f"cannot build timm backbone '{name}' with out_index={out_index}: {e}") from e
        channels = int(self.backbone.feature_info.channels()[-1])  # type: ignore[union-attr,operator]
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.in_chans = in_chans
        self.normalise = in_chans == 3
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.in_chans:
            raise ConfigError(
                f"ImageTokenizer expected {self.in_chans} channels, got {images.shape[1]} "
                "(for the BEV set --student.bev_channels to the data's channel count, or 0 to infer it)"
            )
        if self.normalise:
            images = (images - self.mean) / self.std
        feats = self.backbone(images)[-1]  # (B, C', H', W')
        return self.pool(self.proj(feats)).flatten(2).transpose(1, 2) + self.pos


class BEVSemanticHead(nn.Module):
    """Scene tokens (B, N, D) → BEV semantic logits (B, 3, G, G): G² learnt queries cross-attend to the
    tokens, a linear layer gives each query's 3 channels (TransFuser's auxiliary BEV decoder, compact)."""

    def __init__(self, dim: int, heads: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.queries = nn.Parameter(torch.zeros(grid * grid, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        h, _ = self.attn(q, tokens, tokens, need_weights=False)
        return self.out(h).transpose(1, 2).unflatten(-1, (self.grid, self.grid))


class SceneEncoder(nn.Module):
    """Camera and BEV tokens (+ an ego/command token) fused by transformer encoder layers.

    forward(inputs) → (scene_tokens (B, Nc + Nb, D), ego_token (B, D)). The ego token carries the command
    always and the ego status + past poses only when `use_ego_status`; it takes part in the fusion
    (attends to and is attended by the sensor tokens) and is returned separately for the planning query.
    """

    def __init__(self, cfg: PerceptionConfig) -> None:
        super().__init__()
        if cfg.bev_channels == 0:
            raise ConfigError(
                "bev_channels=0 means 'from the data' but no data set the value: pass --student.bev_channels=C "
                "(the BEV raster's channel count) or build the student through drivedistill.train.run"
            )
        d = cfg.hidden_dim
        self.use_ego_status = cfg.use_ego_status
        self.use_ego_history = cfg.use_ego_history
        self.camera = ImageTokenizer(cfg.camera_backbone, 3, d, cfg.camera_grid, cfg.backbone_out_index)
        self.bev = ImageTokenizer(cfg.bev_backbone, cfg.bev_channels, d, cfg.bev_grid, cfg.backbone_out_index)
        self.type_embed = nn.Parameter(torch.zeros(3, d))  # camera, BEV, ego
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.command = nn.Embedding(NUM_COMMANDS, d)
        self.ego = (
            nn.Sequential(nn.Linear(EGO_VECTOR_DIM, d), nn.GELU(), nn.Linear(d, d))
            if cfg.use_ego_status
            else None
        )
        self.fusion = nn.ModuleList(
            transformer_layer(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_fusion_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.bev_semantic_weight = cfg.bev_semantic_weight
        self.bev_semantic = (
            BEVSemanticHead(d, cfg.num_heads, cfg.bev_semantic_grid) if cfg.bev_semantic_weight > 0 else None
        )

    def training_features(self, scene: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features only training reads (the auxiliary BEV semantic logits), {} in eval mode or without
        the head — planning at inference costs nothing extra."""
        if self.bev_semantic is None or not self.training:
            return {}
        return {"bev_semantic_logits": self.bev_semantic(scene)}

    def auxiliary_losses(self, out: PlanOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": weight × BCE, "bev_semantic": BCE (detached)} of the BEV semantic logits of a training
        forward (`training_features`) against the batch's privileged labelled BEV average-pooled to
        their grid (soft targets in [0, 1]); {} when `out` holds none (no head, eval mode)."""
        logits = out.features.get("bev_semantic_logits")
        if logits is None:
            return {}
        labelled = batch.require_privileged("auxiliary BEV semantic loss").labelled_bev
        if labelled is None:
            raise ValueError(
                "student.bev_semantic_weight > 0 needs the labelled BEV (Privileged.labelled_bev) in the "
                "training data; this store has none (e.g. a source without one): set student.bev_semantic_weight=0"
            )
        target = nn.functional.adaptive_avg_pool2d(
            labelled.to(logits.dtype), (logits.shape[-2], logits.shape[-1])
        )
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        return {"loss": self.bev_semantic_weight * bce, "bev_semantic": bce.detach()}

    def forward(self, inputs: AgentInputBatch) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.camera(inputs.camera) + self.type_embed[0]
        bev = self.bev(inputs.bev) + self.type_embed[1]
        ego = self.command(inputs.command) + self.type_embed[2]
        if self.ego is not None:
            ego = ego + self.ego(ego_vector(inputs, self.use_ego_history))
        tokens = torch.cat([cam, bev, ego.unsqueeze(1)], dim=1)
        for layer in self.fusion:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        return tokens[:, :-1], tokens[:, -1]


class PoseHead(nn.Module):
    """MLP: (..., D) → (..., NUM_FUTURE, 3) poses; yaw bounded to (-π, π) by tanh (TransFuser's head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, NUM_FUTURE * 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x).unflatten(-1, (NUM_FUTURE, 3))
        return torch.cat([out[..., :2] * POSITION_SCALE, torch.tanh(out[..., 2:]) * torch.pi], dim=-1)
