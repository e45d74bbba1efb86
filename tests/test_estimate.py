"""Scale estimates of `drivedistill run --dry-run` (issue #20 pt 2): computed from the config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from drivedistill.estimate import format_estimates, processed_tokens, vlm_train_estimate
from drivedistill.models.vlm.config import VLMConfig, parameter_counts, qwen_config

pytest.importorskip("transformers")
TINY = VLMConfig(image_hw=(64, 128), vocab_size=300)


def test_parameter_counts_equal_the_built_model() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    for cfg in (TINY, dataclasses.replace(TINY, num_layers=3, tie_word_embeddings=True)):
        model = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg))
        counts = parameter_counts(cfg)
        assert counts["total"] == sum(p.numel() for p in model.parameters())
        assert counts["vision"] == sum(p.numel() for p in model.model.visual.parameters())


def test_estimates_follow_the_config() -> None:
    est = {
        n: vlm_train_estimate("s", dataclasses.replace(TINY, num_layers=n), 1, 50, 1000, 4) for n in (2, 4, 8)
    }
    per_layer = est[4].params - est[2].params
    assert per_layer > 0 and est[8].params - est[4].params == 2 * per_layer  # linear in the layers
    lang = {n: parameter_counts(dataclasses.replace(TINY, num_layers=n))["language"] for n in (2, 4)}
    body2 = lang[2] - (lang[4] - lang[2])  # embeddings + head + final norm: what does not scale
    assert lang[4] - body2 == pytest.approx(2 * (lang[2] - body2))  # doubling layers doubles the layer params
    assert est[4].memory_gb["activations"] > est[2].memory_gb["activations"]
    assert est[4].hours["A100"] > est[2].hours["A100"]
    base = est[2]
    twice = vlm_train_estimate("s", dataclasses.replace(TINY, num_layers=2), 1, 50, 2000, 4)
    assert twice.hours["A100"] == pytest.approx(2 * base.hours["A100"])  # time ∝ samples
    assert twice.hours["H100"] < twice.hours["A100"]
    bigger = vlm_train_estimate("s", dataclasses.replace(TINY, image_hw=(128, 256)), 1, 50, 1000, 4)
    assert bigger.tokens_per_sample - 50 == 4 * (base.tokens_per_sample - 50)  # 4× the pixels, 4× tokens
    ckpt = vlm_train_estimate("s", dataclasses.replace(TINY, gradient_checkpointing=True), 1, 50, 1000, 4)
    assert ckpt.memory_gb["activations"] < base.memory_gb["activations"]
    lora = vlm_train_estimate("s", dataclasses.replace(TINY, lora_rank=4), 1, 50, 1000, 4)
    assert lora.trainable < base.trainable and lora.memory_gb["adamw"] < base.memory_gb["adamw"]
    bf16 = vlm_train_estimate("s", dataclasses.replace(TINY, dtype="bfloat16"), 1, 50, 1000, 4)
    assert base.memory_gb["weights"] == pytest.approx(2 * bf16.memory_gb["weights"])  # auto: fp32 weights
    # the formulas of docs/pretrained-vlm.md: full fine-tuning in fp32 is 16 bytes per parameter
    gb = 1024**3
    fixed = base.memory_gb["weights"] + base.memory_gb["grads"] + base.memory_gb["adamw"]
    assert fixed == pytest.approx(base.params * 16 / gb)
    assert lora.memory_gb["weights"] < base.memory_gb["weights"] / 1.9  # bf16 base under LoRA
    lines = format_estimates([base, lora])
    assert "A100" in lines[1] and "LoRA" in lines[-1]


def test_processed_tokens_follow_smart_resize() -> None:
    """Qwen2.5-VL's own processor on a blank image of the camera size gives the same token count."""
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    for hw in ((448, 812), (900, 1600), (64, 128), (30, 40), (4000, 6000)):
        cfg = dataclasses.replace(TINY, patch_size=14, image_hw=hw)
        grid = proc(images=[torch.zeros(3, *hw, dtype=torch.uint8)], return_tensors="pt")["image_grid_thw"][0]
        size = proc.size
        assert processed_tokens(cfg, size["shortest_edge"], size["longest_edge"]) == int(grid.prod()) // 4, hw


@pytest.mark.slow
def test_paper_preset_dry_run_prints_estimates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivedistill.pipeline import main

    assert main(["--preset", "paper", "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    oracle = next(line for line in out.splitlines() if "evodrive_oracle" in line)
    assert "3.75B" in oracle  # Qwen2.5-VL-3B's size, from the preset's architecture
    assert "train vla/evodrive" in out and "h on 8×H100" in out
