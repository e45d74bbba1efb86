"""Local VLM annotator through `transformers` (e.g. Qwen2.5-VL weights in a directory, loaded offline).

Loads `AutoProcessor` + `AutoModelForImageTextToText` from `path` with `local_files_only=True` (nothing
is downloaded), asks Q1 and Q2 about the front image with the future path in red (greedy decoding),
and validates the JSON answers; an invalid answer is stored as a failure with its raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.prompts import Q1_PROMPT, Q2_PROMPT, SYSTEM_PROMPT, scene_context
from drivedistill.annotate.render import render_plan
from drivedistill.annotate.schema import AnswerError, annotation_from_answers
from drivedistill.config import check
from drivedistill.registry import register
from drivedistill.types import Scene
from drivedistill.world.camera import CameraConfig


@dataclass
class TransformersConfig:
    path: str = ""  # local checkpoint directory (config.json, weights, processor files); required
    max_new_tokens: int = field(default=200, metadata=check(ge=1))
    # upscale the camera image before drawing the path
    image_scale: int = field(default=2, metadata=check(ge=1))
    device: str = "auto"  # auto | cpu | cuda[:i]
    dtype: str = "float32"  # float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.image_scale < 1:
            raise ValueError("TransformersConfig: max_new_tokens and image_scale must be >= 1")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ValueError(
                f"TransformersConfig.dtype: expected float32 | bfloat16 | float16, got {self.dtype!r}"
            )


class TransformersAnnotator(Annotator):
    """Annotates with a local image-text-to-text model."""

    name = "transformers"
    throughput_fields = ("device",)

    def __init__(self, cfg: TransformersConfig, camera: CameraConfig | None = None) -> None:
        super().__init__(cfg)
        self.cfg: TransformersConfig = cfg
        self.camera = camera
        path = Path(cfg.path)
        if not cfg.path or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"transformers annotator: '{cfg.path}' is not a local model directory (no config.json). "
                "Pass --annotator.path=DIR with a checkpoint saved by save_pretrained (model + processor), "
                "e.g. Qwen2.5-VL-3B-Instruct downloaded beforehand; nothing is downloaded at run time."
            )
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from drivedistill.utils.runtime import select_device

        self.device = select_device(cfg.device)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, dtype=getattr(torch, cfg.dtype)
        )
        self.model = model.to(self.device).eval()

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["config"]["path"] = str(Path(self.cfg.path).resolve())
        return ident

    def ask(self, image: Image.Image, text: str) -> str:
        """Greedy answer of the model to `text` about `image` (new tokens only, special tokens removed)."""
        import torch

        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
        ]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return str(self.processor.batch_decode(new, skip_special_tokens=True)[0])

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:
        image = Image.fromarray(render_plan(scene, self.camera, scale=self.cfg.image_scale))
        context = scene_context(scene)
        q1 = self.ask(image, f"{context}\n{Q1_PROMPT}")
        q2 = self.ask(image, f"{context}\n{Q2_PROMPT}")
        raw = f"Q1: {q1}\nQ2: {q2}"
        try:
            return AnnotationResult(scene.token, sample_hash, annotation_from_answers(q1, q2), raw)
        except AnswerError as e:
            return AnnotationResult(scene.token, sample_hash, None, raw, str(e))


@register("annotator", "transformers", TransformersConfig)
def build(cfg: TransformersConfig, camera: CameraConfig | None = None) -> TransformersAnnotator:
    return TransformersAnnotator(cfg, camera)
