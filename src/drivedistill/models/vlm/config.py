"""`VLMConfig`: the size of a tiny Qwen2.5-VL, and its translation to a `Qwen2_5_VLConfig`.

The defaults give a ~1 M-parameter model (text hidden 128, 2 layers; vision depth 2, hidden 64) that
runs a 128×256 image in a few ms on one CPU core. Pitfalls handled here (see reference/ml-stack.md):
`mrope_section` sums to head_dim/2; the vision `out_hidden_size` equals the text hidden size; the image
size is a multiple of patch_size·merge_size so that image tokens = (H/p)·(W/p)/merge².
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivedistill.config import check

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig


DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class VLMConfig:
    """Architecture of the tiny VLM (ignored when `pretrained_dir` is set: the saved config wins)."""

    pretrained_dir: str = ""  # local dir written by VLMCore.save (or real Qwen2.5-VL weights); "" = fresh
    # BPE vocabulary of the offline tokenizer (ignored with pretrained_dir)
    vocab_size: int = field(default=512, metadata=check(ge=1))
    # text hidden size D (= vision out_hidden_size)
    hidden_size: int = field(default=128, metadata=check(ge=1))
    num_layers: int = field(default=2, metadata=check(ge=1))
    num_heads: int = field(default=4, metadata=check(ge=1))
    num_kv_heads: int = field(default=2, metadata=check(ge=1))
    intermediate_size: int = field(default=256, metadata=check(ge=1))
    vision_depth: int = field(default=2, metadata=check(ge=1))
    vision_hidden_size: int = field(default=64, metadata=check(ge=1))
    vision_heads: int = field(default=4, metadata=check(ge=1))
    vision_intermediate_size: int = field(default=128, metadata=check(ge=1))
    patch_size: int = field(default=16, metadata=check(ge=1))  # [px]
    # a still image is repeated over the temporal patch
    temporal_patch_size: int = field(default=2, metadata=check(ge=1))
    merge_size: int = field(default=2, metadata=check(ge=1))  # 2×2 patches → one visual token
    # (H, W) [px] images are resized to; multiples of patch·merge
    image_hw: tuple[int, int] = field(default=(128, 256), metadata=check(ge=1))
    max_position_embeddings: int = field(default=2048, metadata=check(ge=1))
    rope_theta: float = field(default=10000.0, metadata=check(gt=0))
    tie_word_embeddings: bool = False  # LM head shares the input embeddings (Qwen2.5-VL-3B: true)
    # ----- loading options (used with `pretrained_dir`; dtype/device/checkpointing/LoRA also for fresh models)
    # With a foreign checkpoint (the public Qwen2.5-VL layout, no drivedistill_vlm.json), `image_hw` is the
    # camera size (H, W) fed to the role; the checkpoint's own processor resizes it (smart_resize within its
    # min/max pixels) and the loaded core's `cfg.image_hw` becomes that resized size.
    dtype: str = "auto"  # weights: auto (CUDA: bf16 with LoRA, fp32 for full fine-tuning; CPU: fp32) | float32 | bfloat16 | float16
    device: str = ""  # "" = leave placement to the trainer | auto | cpu | cuda[:i]
    gradient_checkpointing: bool = False  # recompute decoder/vision blocks in backward (saves activations)
    # > 0: LoRA adapters through `peft` on `lora_targets`; all other weights frozen
    lora_rank: int = field(default=0, metadata=check(ge=0))
    lora_alpha: int = field(default=16, metadata=check(ge=0))
    lora_dropout: float = field(default=0.05, metadata=check(ge=0, lt=1))
    lora_targets: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"  # peft regex (full match)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"VLMConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"VLMConfig.num_heads={self.num_heads} must be divisible by num_kv_heads={self.num_kv_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                "VLMConfig: head_dim = hidden_size / num_heads must be even (rotary); change num_heads"
            )
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError(
                f"VLMConfig.vision_hidden_size={self.vision_hidden_size} must be divisible by vision_heads={self.vision_heads}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"VLMConfig.dtype={self.dtype!r}: use one of {DTYPES}")
        if self.lora_rank < 0:
            raise ValueError(f"VLMConfig.lora_rank={self.lora_rank} must be >= 0 (0 = no LoRA)")
        if any(s <= 0 for s in self.image_hw):
            raise ValueError(f"VLMConfig.image_hw={self.image_hw} must be positive")

    def check_image_hw(self) -> None:
        """Our own preprocessing needs `image_hw` in multiples of patch_size·merge_size (a foreign
        checkpoint's processor resizes any camera size itself, so only models built here check it)."""
        step = self.patch_size * self.merge_size
        if any(s % step for s in self.image_hw):
            raise ValueError(
                f"VLMConfig.image_hw={self.image_hw} must be positive multiples of patch_size·merge_size = {step}"
            )

    def torch_dtype(self) -> torch.dtype:
        """`dtype` of the weights, resolved: "auto" is bfloat16 on CUDA for LoRA (frozen base weights),
        else float32 — full fine-tuning keeps fp32 weights because AdamW steps of lr 2e-5 vanish in bf16
        weights; the trainer's bf16 autocast (`train.precision`) does the compute in bf16 on GPU."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() and self.lora_rank > 0 else torch.float32
        return getattr(torch, self.dtype)  # type: ignore[no-any-return]

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one image becomes after the 2×2 merger."""
        h, w = self.image_hw
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2

    @property
    def mrope_section(self) -> list[int]:
        """(temporal, height, width) split of head_dim/2 rotary frequencies; sums to head_dim/2."""
        half = self.hidden_size // self.num_heads // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


def qwen_config(
    cfg: VLMConfig, tokenizer: PreTrainedTokenizerFast | None = None, vocab_size: int = 0
) -> Qwen2_5_VLConfig:
    """The hand-written `Qwen2_5_VLConfig` for `cfg`, with the special-token ids of `tokenizer`
    (None: ids 0 … 6 and `vocab_size` or `cfg.vocab_size` entries — enough to size the model)."""
    from transformers import Qwen2_5_VLConfig

    from drivedistill.models.vlm.tokenizer import (
        IM_END,
        IMAGE_PAD,
        PAD,
        SPECIAL_TOKENS,
        VIDEO_PAD,
        VISION_END,
        VISION_START,
        token_id,
    )

    def tid(t: str) -> int:
        return token_id(tokenizer, t) if tokenizer is not None else SPECIAL_TOKENS.index(t)

    text: dict[str, Any] = {
        "vocab_size": len(tokenizer) if tokenizer is not None else (vocab_size or cfg.vocab_size),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rope_theta,
            "mrope_section": cfg.mrope_section,
        },
        "bos_token_id": tid(PAD),
        "eos_token_id": tid(IM_END),
        "pad_token_id": tid(PAD),
    }
    vision: dict[str, Any] = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "intermediate_size": cfg.vision_intermediate_size,
        "num_heads": cfg.vision_heads,
        "patch_size": cfg.patch_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        "spatial_merge_size": cfg.merge_size,
        "out_hidden_size": cfg.hidden_size,
        "window_size": cfg.patch_size * cfg.merge_size * 4,
        "fullatt_block_indexes": list(range(cfg.vision_depth)),  # tiny images: full attention everywhere
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tid(IMAGE_PAD),
        video_token_id=tid(VIDEO_PAD),
        vision_start_token_id=tid(VISION_START),
        vision_end_token_id=tid(VISION_END),
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def parameter_counts(cfg: VLMConfig) -> dict[str, int]:
    """Exact parameter counts of the Qwen2.5-VL that `cfg` describes (built on the `meta` device: no
    memory, no weights): {"total", "vision" (encoder + merger), "language" (decoder + embeddings + head)}."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg))
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"total": total, "vision": vision, "language": total - vision}
