"""Shared tiny-VLM core: Qwen2.5-VL built offline, BPE tokenizer, image preprocessing, prompts/labels."""

from __future__ import annotations

from drivedistill.models.vlm.config import VLMConfig, qwen_config
from drivedistill.models.vlm.core import VLMCore, VLMOutput
from drivedistill.models.vlm.image import preprocess_images
from drivedistill.models.vlm.prompt import (
    IGNORE_INDEX,
    Encoded,
    chat_prompt,
    encode,
    format_number,
    format_plan,
    parse_plan,
    user_text,
)
from drivedistill.models.vlm.tokenizer import SPECIAL_TOKENS, build_tokenizer, load_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "Encoded",
    "VLMConfig",
    "VLMCore",
    "VLMOutput",
    "build_tokenizer",
    "chat_prompt",
    "encode",
    "format_number",
    "format_plan",
    "load_tokenizer",
    "parse_plan",
    "preprocess_images",
    "qwen_config",
    "user_text",
]
