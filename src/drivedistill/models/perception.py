"""Perception of the VLA vision encoder: BEV-occupancy pretraining and a frozen linear probe.

EvoDriveVLA protects the *pretrained perception* of the vision encoder while planning fine-tuning
unfreezes it. Offline there are no pretrained weights, so perception is made explicitly:

1. `OccupancyPretraining` is the VLM's vision encoder + merger (with a throw-away linear head) trained
   by the training loop (`recipes.evodrive.pretrain_perception`) to predict a coarse BEV **agent
   occupancy** grid from the front camera; targets come from `Privileged.agents` at t = 0
   (training-time supervision only).
2. `linear_probe` measures perception: a logistic-regression probe on the *frozen* flattened visual
   tokens (B, T·D) predicts the same grid on held-out scenes → occupancy IoU and cell accuracy. Run it
   before and after planning fine-tuning (with / without self-anchoring) to see perception being lost.

Grid: cells of `cell` metres over x ∈ x_range (forward) × y ∈ y_range (left) in the current ego frame;
a cell is occupied when any of an agent's box corners or its centre falls in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivedistill.config import check
from drivedistill.models.vlm.core import VLMCore
from drivedistill.types import Scene


@dataclass
class PerceptionConfig:
    x_range: tuple[float, float] = (0.0, 60.0)  # [m] forward extent of the grid
    y_range: tuple[float, float] = (-10.0, 10.0)  # [m] lateral extent (y left)
    cell: float = field(default=5.0, metadata=check(gt=0))  # [m] cell size → 12 × 4 cells by default
    steps: int = field(default=200, metadata=check(ge=1))  # pretraining steps
    batch_size: int = field(default=16, metadata=check(ge=1))
    lr: float = field(default=1e-3, metadata=check(gt=0))
    probe_steps: int = field(default=300, metadata=check(ge=1))  # full-batch Adam steps of the logistic probe
    probe_lr: float = field(default=1e-2, metadata=check(gt=0))
    probe_weight_decay: float = field(default=1e-3, metadata=check(ge=0))

    def __post_init__(self) -> None:
        for name in ("x_range", "y_range"):
            lo, hi = getattr(self, name)
            if hi <= lo:
                raise ValueError(f"PerceptionConfig.{name}={(lo, hi)} must be increasing")
        if self.cell <= 0:
            raise ValueError(f"PerceptionConfig.cell={self.cell} must be > 0 [m]")

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (
            int(np.ceil((self.x_range[1] - self.x_range[0]) / self.cell)),
            int(np.ceil((self.y_range[1] - self.y_range[0]) / self.cell)),
        )


def occupancy_grid(agents: np.ndarray, valid: np.ndarray, cfg: PerceptionConfig) -> np.ndarray:
    """agents (A, 8) AGENT_FIELDS at one time, valid (A,) → (Gx·Gy,) float32 {0, 1}, x-major."""
    gx, gy = cfg.grid_shape
    grid = np.zeros((gx, gy), np.float32)
    for a in np.flatnonzero(valid):
        x, y, yaw, length, width = agents[a, :5]
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.array(
            [
                [0, 0],
                [length / 2, width / 2],
                [length / 2, -width / 2],
                [-length / 2, width / 2],
                [-length / 2, -width / 2],
            ]
        )
        pts = np.stack([x + c * local[:, 0] - s * local[:, 1], y + s * local[:, 0] + c * local[:, 1]], -1)
        ix = np.floor((pts[:, 0] - cfg.x_range[0]) / cfg.cell).astype(int)
        iy = np.floor((pts[:, 1] - cfg.y_range[0]) / cfg.cell).astype(int)
        ok = (ix >= 0) & (ix < gx) & (iy >= 0) & (iy < gy)
        grid[ix[ok], iy[ok]] = 1.0
    return grid.reshape(-1)


def scene_arrays(scene: Scene, cfg: PerceptionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene → (its front camera (3, H, W) uint8, its occupancy target (G,)) from agents at t = 0."""
    if scene.privileged is None:
        raise ValueError(
            f"perception targets need Privileged.agents; scene {scene.token} has no privileged part"
        )
    image = torch.from_numpy(np.array(scene.agent_input.camera)).permute(2, 0, 1).contiguous()
    target = occupancy_grid(scene.privileged.agents[0], scene.privileged.agents_valid[0], cfg)
    return image, torch.from_numpy(target)


def scene_batch(scenes: Sequence[Scene], cfg: PerceptionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes → (images (N, 3, H, W) in [0, 1], occupancy targets (N, G)) from agents at t = 0."""
    images, targets = zip(*(scene_arrays(s, cfg) for s in scenes), strict=True)
    return torch.stack(images).float() / 255.0, torch.stack(targets)


def visual_features(core: VLMCore, images: torch.Tensor, visual: nn.Module | None = None) -> torch.Tensor:
    """(N, 3, H, W) → (N, T·D) flattened merged visual tokens of `visual` (default: the core's encoder)."""
    pv, grid = core.image_inputs(images)
    return core.visual_tokens(pv, grid, visual).reshape(images.shape[0], -1)


def effective_rank(features: torch.Tensor) -> float:
    """Participation-ratio rank (Σσ)² / Σσ² of the centred features (N, F): ≈ k for k equal singular
    values, 1 for rank-one features. Shows pretraining collapsing the visual tokens onto few directions."""
    s = torch.linalg.svdvals((features - features.mean(0)).double())
    return float(s.sum() ** 2 / (s**2).sum().clamp_min(1e-30))


def iou_and_accuracy(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Occupancy IoU (over all cells of all samples) and cell accuracy at threshold 0.5."""
    pred = logits > 0
    tgt = target > 0.5
    inter = (pred & tgt).sum().item()
    union = (pred | tgt).sum().item()
    return {
        "iou": inter / max(union, 1),
        "accuracy": (pred == tgt).float().mean().item(),
        "occupied_fraction": tgt.float().mean().item(),
    }


@dataclass
class OccupancyBatch:
    """A batch of perception pretraining: images (B, 3, H, W) in [0, 1], occupancy targets (B, G)."""

    images: torch.Tensor
    targets: torch.Tensor
    tokens: list[str]

    def to(self, device: str | torch.device) -> OccupancyBatch:
        return OccupancyBatch(self.images.to(device), self.targets.to(device), self.tokens)


OccupancySample = tuple[torch.Tensor, torch.Tensor, str]  # image (3, H, W) uint8, target (G,), token


class OccupancyPretraining(nn.Module):
    """Perception pretraining as a model of the training loop (`train.loop.fit`): the core's vision
    encoder + merger with a throw-away linear head, `losses` = BCE on the BEV agent occupancy (positive
    cells weighted by their rarity). The rest of the VLM is held outside the module tree, so the loop
    neither optimises nor saves it.

        model, samples = OccupancyPretraining.build(core, scenes, cfg, seed)
        fit(model, samples, train_cfg, out_dir, collate=OccupancyPretraining.collate)
    """

    def __init__(self, core: VLMCore, dim: int, cells: int, pos_weight: torch.Tensor) -> None:
        super().__init__()
        self._core = [core]  # not a submodule: only `visual` (a submodule) and `head` train
        self.visual = core.visual
        self.head = nn.Linear(dim, cells)
        self.pos_weight: torch.Tensor
        self.register_buffer("pos_weight", pos_weight)

    @classmethod
    def build(
        cls, core: VLMCore, scenes: Iterable[Scene], cfg: PerceptionConfig, seed: int = 0
    ) -> tuple[OccupancyPretraining, list[OccupancySample]]:
        """The model (head seeded by `seed`) and its training samples (targets from Privileged.agents);
        `scenes` are read once (e.g. straight from a store), the samples keep uint8 images."""
        samples = [(*scene_arrays(s, cfg), s.token) for s in scenes]
        if not samples:
            raise ValueError("OccupancyPretraining.build: no scenes to pretrain on")
        targets = torch.stack([t for _, t, _ in samples])
        with torch.no_grad():
            dim = visual_features(core, samples[0][0][None].float() / 255.0).shape[1]
        pos_weight = ((1 - targets.mean(0)) / targets.mean(0).clamp_min(1e-3)).clamp(1.0, 20.0)
        torch.manual_seed(seed)
        model = cls(core, dim, targets.shape[1], pos_weight)
        return model, samples

    @staticmethod
    def collate(items: Sequence[OccupancySample]) -> OccupancyBatch:
        return OccupancyBatch(
            torch.stack([i for i, _, _ in items]).float() / 255.0,
            torch.stack([t for _, t, _ in items]),
            [k for *_, k in items],
        )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(visual_features(self._core[0], images, self.visual))

    def losses(self, batch: OccupancyBatch) -> dict[str, torch.Tensor]:
        loss = F.binary_cross_entropy_with_logits(
            self.logits(batch.images), batch.targets, pos_weight=self.pos_weight
        )
        return {"loss": loss, "occupancy_bce": loss.detach()}

    @torch.no_grad()
    def evaluate(self, samples: Sequence[OccupancySample]) -> dict[str, float]:
        """The pretraining head's own occupancy IoU / accuracy on `samples` (eval mode, CPU; its logit 0
        threshold, which the positive-cell weighting of the loss shifts towards predicting occupied)."""
        self.eval()
        batches = [self.collate(samples[j : j + 64]) for j in range(0, len(samples), 64)]
        logits = torch.cat([self.logits(b.images) for b in batches])
        return iou_and_accuracy(logits, torch.cat([b.targets for b in batches]))

    @torch.no_grad()
    def mean_loss(self, samples: Sequence[OccupancySample]) -> float:
        """Mean BCE over `samples` (eval mode, CPU)."""
        self.eval()
        parts = [self.losses(self.collate(samples[j : j + 64]))["loss"] for j in range(0, len(samples), 64)]
        return float(torch.stack(parts).mean())


def linear_probe(
    core: VLMCore,
    train: Sequence[Scene],
    val: Sequence[Scene],
    cfg: PerceptionConfig,
    visual: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Fit a logistic probe on frozen features of `train`, report IoU / accuracy on `val` (and train), and
    the effective rank of the train features (`effective_rank`, before standardisation)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        xs, ys = scene_batch(train, cfg)
        xv, yv = scene_batch(val, cfg)
        ft, fv = visual_features(core, xs, visual), visual_features(core, xv, visual)
        rank = effective_rank(ft)
        mu, sd = ft.mean(0), ft.std(0).clamp_min(1e-6)
        ft, fv = (ft - mu) / sd, (fv - mu) / sd
    probe = nn.Linear(ft.shape[1], ys.shape[1])
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay)
    for _ in range(cfg.probe_steps):
        loss = F.binary_cross_entropy_with_logits(probe(ft), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = iou_and_accuracy(probe(fv), yv)
        out["train_iou"] = iou_and_accuracy(probe(ft), ys)["iou"]
    out["feature_effective_rank"] = rank
    return out


def probe_baselines(train: list[Any], val: list[Any], pcfg: Any) -> dict[str, Any]:
    """What a perception-probe IoU must beat, on the same validation scenes and grid: predicting every
    cell empty; and the per-cell occupancy prior of the train split (cells occupied in more than half the
    train scenes, the probe's own 0.5 threshold; and at the threshold with the best train IoU). The probe
    on a randomly initialised encoder is the perception stage's `probe_random_init` (teacher_quality)."""

    def grids(scenes: list[Scene]) -> torch.Tensor:
        return torch.from_numpy(
            np.stack(
                [
                    occupancy_grid(s.privileged.agents[0], s.privileged.agents_valid[0], pcfg)
                    for s in scenes
                    if s.privileged is not None
                ]
            )
        )

    ys, yv = grids(train), grids(val)
    prior = ys.mean(0)

    def constant(occupied: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        logits = torch.where(occupied, 1.0, -1.0).expand_as(target)
        return iou_and_accuracy(logits, target)

    thresholds = sorted({float(p) for p in prior.tolist() if p > 0})
    best = max(thresholds, key=lambda t: constant(prior >= t, ys)["iou"], default=1.0)
    out: dict[str, Any] = {
        "all_empty": constant(torch.zeros_like(prior, dtype=torch.bool), yv),
        "cell_prior": constant(prior > 0.5, yv),
        "cell_prior_best_threshold": {**constant(prior >= best, yv), "threshold": best},
    }
    return out
