"""Perception pretraining of the VLA's vision encoder (EvoDrive recipe) goes through the one training loop:
it trains the vision encoder + merger only, lowers the occupancy loss, and checkpoints like any stage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from drivedistill.models.perception import PerceptionConfig, effective_rank
from drivedistill.models.vlm import VLMConfig, VLMCore
from drivedistill.recipes.evodrive import EvoDriveRecipeConfig, pretrain_perception, quality
from drivedistill.testing import random_scene


def test_pretraining_trains_the_vision_encoder_only_through_fit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    core = VLMCore.build(
        VLMConfig(
            image_hw=(64, 128),
            hidden_size=64,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=128,
            vision_depth=1,
        )
    )
    scenes = [random_scene(seed=i, num_agents=6, token=f"s{i}") for i in range(24)]
    visual_ids = {id(p) for p in core.visual.parameters()}
    before = {n: p.detach().clone() for n, p in core.named_parameters()}
    val = [random_scene(seed=100 + i, num_agents=6, token=f"v{i}") for i in range(4)]
    losses = pretrain_perception(
        core, scenes, PerceptionConfig(steps=30, batch_size=8), tmp_path / "pre", val=val
    )
    changed = {n for n, p in core.named_parameters() if not torch.equal(before[n], p.detach())}
    visual_names = {n for n, p in core.named_parameters() if id(p) in visual_ids}
    assert changed and changed <= visual_names  # the language model is untouched
    assert losses["last"] < 0.9 * losses["first"]  # fits its 24 training scenes
    assert any((tmp_path / "pre" / "checkpoints").iterdir())  # the loop's checkpoints
    assert 0.0 <= losses["head_val_iou"] <= 1.0  # the head's own IoU on held-out scenes


def test_effective_rank_counts_the_directions_features_span() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.randn(400, 64, generator=g)
    low = torch.randn(400, 3, generator=g) @ torch.randn(3, 64, generator=g)
    assert effective_rank(full) > 40  # isotropic noise spans most of its 64 dimensions
    assert effective_rank(low) <= 3.0 + 1e-6  # rank-3 features: at most 3
    assert effective_rank(low + 5.0) == pytest.approx(effective_rank(low))  # centred: an offset adds none


def test_evodrive_gate_compares_the_same_probe_and_reports_what_pretraining_learned() -> None:
    summary = {
        "probe_random_init": {"iou": 0.25, "feature_effective_rank": 198.0},
        "probe_pretrained": {"iou": 0.17, "feature_effective_rank": 31.0},
        "pretrain_loss": {"first": 1.2, "last": 0.7, "head_val_iou": 0.14},
        "baselines": {"cell_prior_best_threshold": {"iou": 0.11}},
    }
    out = quality(EvoDriveRecipeConfig(), {"evodrive_perception": SimpleNamespace(summary=summary)})
    assert out["checks"] == {"probe_beats_random_init": False} and not out["pass"]
    assert out["metrics"]["pretrain_head_val_iou"] == 0.14
    assert out["metrics"]["cell_prior_iou"] == 0.11
    assert out["metrics"]["feature_effective_rank_pretrained"] == 31.0
    summary["probe_pretrained"]["iou"] = 0.3
    assert quality(EvoDriveRecipeConfig(), {"evodrive_perception": SimpleNamespace(summary=summary)})["pass"]
