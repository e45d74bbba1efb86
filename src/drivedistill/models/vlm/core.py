"""`VLMCore`: a Qwen2.5-VL model with its offline tokenizer — the shared core of every VLM here.

    core = VLMCore.build(VLMConfig())                       # fresh tiny model + BPE tokenizer
    enc = encode(core.tokenizer, prompts, answers)          # models/vlm/prompt.py
    out = core(enc, images)                                 # logits, hidden states, visual tokens
    texts = core.generate(encode(core.tokenizer, prompts, padding_side="left"), images, 96)
    core.save(dir); core = VLMCore.build(VLMConfig(pretrained_dir=dir))

The forward is split into visual tokens → input embeddings → language model so that methods can swap
the visual tokens (EvoDriveVLA's frozen anchor encoder) or read any stage. Position ids always come
from `get_rope_index` with `mm_token_type_ids` (without it the 3-D rotary is silently skipped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from drivedistill.models.vlm.config import VLMConfig, qwen_config
from drivedistill.models.vlm.image import preprocess_images
from drivedistill.models.vlm.prompt import Encoded
from drivedistill.models.vlm.tokenizer import build_tokenizer, load_tokenizer, token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

VLM_CONFIG_FILE = "drivedistill_vlm.json"


@dataclass
class VLMOutput:
    """logits (B, L, V); hidden (B, L, D) last hidden states after the final norm; image_embeds (N·T, D)
    the merged visual tokens that were inserted (N images × T tokens, in image order); image_mask (B, L)
    bool where they sit."""

    logits: torch.Tensor
    hidden: torch.Tensor
    image_embeds: torch.Tensor
    image_mask: torch.Tensor


class VLMCore(nn.Module):
    """A `Qwen2_5_VLForConditionalGeneration` plus tokenizer and `VLMConfig`."""

    def __init__(
        self, model: Qwen2_5_VLForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, cfg: VLMConfig
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg

    # ----- construction / persistence -------------------------------------------------------------
    @classmethod
    def build(cls, cfg: VLMConfig) -> VLMCore:
        """A fresh tiny model (random weights, offline tokenizer), or the one saved in `cfg.pretrained_dir`."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        if cfg.pretrained_dir:
            return cls.load(cfg.pretrained_dir)
        tokenizer = build_tokenizer(cfg.vocab_size)
        model = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg, tokenizer))
        return cls(model, tokenizer, cfg)

    @classmethod
    def load(cls, path: str | Path) -> VLMCore:
        """Load model + tokenizer (+ our `VLMConfig`) from a local directory; nothing is downloaded."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        p = Path(path)
        if not p.is_dir() or not (p / "config.json").exists():
            raise FileNotFoundError(
                f"VLMCore.load: {p} is not a saved VLM (no config.json). Set vlm.pretrained_dir to a directory "
                "written by VLMCore.save (or holding local Qwen2.5-VL weights), or leave it empty for a fresh model."
            )
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(p), local_files_only=True)
        tokenizer = load_tokenizer(p)
        if (p / VLM_CONFIG_FILE).exists():
            raw = json.loads((p / VLM_CONFIG_FILE).read_text())
            raw["image_hw"] = tuple(raw["image_hw"])
            cfg = VLMConfig(**{**raw, "pretrained_dir": str(p)})
        else:  # foreign Qwen2.5-VL weights: read the geometry from their config
            qc: Any = model.config
            tc, vc = qc.text_config, qc.vision_config
            step = vc.patch_size * vc.spatial_merge_size
            cfg = VLMConfig(
                pretrained_dir=str(p), hidden_size=tc.hidden_size, num_heads=tc.num_attention_heads,
                num_kv_heads=tc.num_key_value_heads, patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                temporal_patch_size=vc.temporal_patch_size, vision_hidden_size=vc.hidden_size, vision_heads=vc.num_heads,
                image_hw=(4 * step, 8 * step),
            )  # fmt: skip
        return cls(model, tokenizer, cfg)

    def save(self, path: str | Path) -> None:
        """Write model (safetensors), tokenizer and `VLMConfig` into `path`."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(p))
        self.tokenizer.save_pretrained(str(p))
        (p / VLM_CONFIG_FILE).write_text(json.dumps({**asdict(self.cfg), "pretrained_dir": ""}, indent=2))

    def add_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add new special tokens (single ids) and resize the embeddings and LM head; returns their ids."""
        self.tokenizer.add_special_tokens(
            {"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False
        )
        self.model.resize_token_embeddings(len(self.tokenizer))
        return [token_id(self.tokenizer, t) for t in tokens]

    # ----- pieces of the forward pass --------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        qc: Any = self.model.config
        return int(qc.text_config.hidden_size)

    @property
    def visual(self) -> nn.Module:
        """The vision encoder incl. its patch merger (projector into the text hidden size)."""
        return self.model.model.visual  # type: ignore[no-any-return]

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers  # type: ignore[no-any-return]

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(…, D) hidden states → (…, V) logits."""
        return self.model.lm_head(hidden)  # type: ignore[no-any-return]

    def image_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] → pixel_values (N·P, C·tp·p²), image_grid_thw (N, 3)."""
        return preprocess_images(images, self.cfg)

    def visual_tokens(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, visual: nn.Module | None = None
    ) -> torch.Tensor:
        """Merged visual tokens (N·T, D) from `visual` (default: this model's encoder)."""
        enc = self.visual if visual is None else visual
        out = enc(pixel_values.to(self.model.dtype), grid_thw=grid_thw)
        return out.pooler_output  # type: ignore[no-any-return]

    def embed(self, enc: Encoded, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with the `<|image_pad|>` positions replaced → (inputs_embeds (B, L, D), image_mask (B, L))."""
        emb = self.model.get_input_embeddings()(enc.input_ids)
        mask = enc.input_ids == self.model.config.image_token_id
        if int(mask.sum()) != image_embeds.shape[0]:
            raise ValueError(
                f"VLMCore.embed: {int(mask.sum())} <|image_pad|> tokens but {image_embeds.shape[0]} visual tokens; "
                f"build prompts with tokens_per_image={self.cfg.tokens_per_image} per image"
            )
        emb = emb.masked_scatter(mask.unsqueeze(-1), image_embeds.to(emb.dtype))
        return emb, mask

    def position_ids(self, enc: Encoded, grid_thw: torch.Tensor) -> torch.Tensor:
        """(3, B, L) multimodal rotary positions (temporal, height, width)."""
        pos, _ = self.model.model.get_rope_index(
            enc.input_ids,
            mm_token_type_ids=enc.mm_token_type_ids,
            image_grid_thw=grid_thw,
            attention_mask=enc.attention_mask,
        )
        return pos  # type: ignore[no-any-return]

    def language_model(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D) embeddings → (B, L, D) last hidden states (after the final norm)."""
        out = self.model.model.language_model(
            inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=attention_mask
        )
        return out.last_hidden_state  # type: ignore[no-any-return]

    def forward(
        self, enc: Encoded, images: torch.Tensor, image_embeds: torch.Tensor | None = None
    ) -> VLMOutput:
        """Teacher-forced pass. images (N, 3, H, W), N = images per sample × B in sample-major order.

        `image_embeds` (N·T, D) replaces the encoder's visual tokens when given (then `images` only sets
        the grid).
        """
        pixel_values, grid = self.image_inputs(images)
        if image_embeds is None:
            image_embeds = self.visual_tokens(pixel_values, grid)
        emb, mask = self.embed(enc, image_embeds)
        hidden = self.language_model(emb, self.position_ids(enc, grid), enc.attention_mask)
        return VLMOutput(self.lm_head(hidden), hidden, image_embeds, mask)

    @torch.no_grad()
    def generate(self, enc: Encoded, images: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy batched decoding of left-padded prompts → answer texts (special tokens stripped)."""
        if bool((enc.attention_mask[:, -1] == 0).any()):
            raise ValueError(
                "VLMCore.generate: prompts must be left-padded (encode(..., padding_side='left'))"
            )
        pixel_values, grid = self.image_inputs(images)
        model: Any = self.model
        out = model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            mm_token_type_ids=enc.mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = out[:, enc.input_ids.shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
