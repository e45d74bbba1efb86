"""Local transformers VLM annotator: a missing checkpoint is a clear error; a tiny random Qwen2.5-VL
saved to a tmp dir loads offline, answers garbage, and every answer is stored as a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivedistill import registry
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store
from drivedistill.annotate.transformers import TransformersConfig
from drivedistill.testing import random_scene
from drivedistill.types import Scene

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--annotator\.path=DIR"):
        registry.build("annotator", "transformers", TransformersConfig(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="not a local model directory"):
        registry.build("annotator", "transformers", TransformersConfig())


def _tiny_qwen(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from drivedistill.models.vlm.config import VLMConfig, qwen_config
    from drivedistill.models.vlm.tokenizer import build_tokenizer

    cfg = VLMConfig()
    tok = build_tokenizer(cfg.vocab_size)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(qwen_config(cfg, tok)).save_pretrained(out)
    patches = {"patch_size": cfg.patch_size, "merge_size": cfg.merge_size, "temporal_patch_size": 2}
    image = Qwen2VLImageProcessor(**patches, min_pixels=64 * 64, max_pixels=128 * 256)
    video = Qwen2VLVideoProcessor(**patches)
    Qwen2_5_VLProcessor(
        image_processor=image, tokenizer=tok, video_processor=video, chat_template=TEMPLATE
    ).save_pretrained(out)


def test_tiny_random_qwen_answers_are_stored_as_failures(tmp_path: Path) -> None:
    _tiny_qwen(tmp_path / "vlm")
    scenes = {f"s{i}": random_scene(i, camera_hw=(128, 256), token=f"s{i}") for i in range(2)}

    class Src:
        def tokens(self, split: str | None = None) -> list[str]:
            return list(scenes)

        def load(self, token: str, with_privileged: bool = True) -> Scene:
            return scenes[token]

        def sample_hash(self, token: str) -> str:
            return "h" + token

    cfg = TransformersConfig(path=str(tmp_path / "vlm"), max_new_tokens=8, device="cpu")
    annotator = registry.build("annotator", "transformers", cfg)
    summary = annotate_store(Src(), annotator, tmp_path / "ann")
    assert (summary.done, summary.failed) == (0, 2)
    rows = AnnotationCache(tmp_path / "ann").read(summary.key)
    assert all(r.raw.startswith("Q1: ") and "\nQ2: " in r.raw and r.error for r in rows.values())
