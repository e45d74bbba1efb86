"""Perception pretraining of the VLA's vision encoder (EvoDrive recipe) goes through the one training loop:
it trains the vision encoder + merger only, lowers the occupancy loss, and checkpoints like any stage."""

from __future__ import annotations

from pathlib import Path

import torch

from drivedistill.models.perception import PerceptionConfig
from drivedistill.models.vlm import VLMConfig, VLMCore
from drivedistill.recipes.evodrive import pretrain_perception
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
    losses = pretrain_perception(core, scenes, PerceptionConfig(steps=30, batch_size=8), tmp_path / "pre")
    changed = {n for n, p in core.named_parameters() if not torch.equal(before[n], p.detach())}
    visual_names = {n for n, p in core.named_parameters() if id(p) in visual_ids}
    assert changed and changed <= visual_names  # the language model is untouched
    assert losses["last"] < 0.9 * losses["first"]  # fits its 24 training scenes
    assert any((tmp_path / "pre" / "checkpoints").iterdir())  # the loop's checkpoints
