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
from drivedistill.models.vlm.image import PROCESSOR_FILE, load_processor, preprocess_images, processed_hw
from drivedistill.models.vlm.prompt import Encoded
from drivedistill.models.vlm.tokenizer import build_tokenizer, load_tokenizer, token_id

LOAD_OPTIONS = (
    "dtype",
    "device",
    "gradient_checkpointing",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)

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
        self.processor: Any = None  # the checkpoint's AutoProcessor (foreign checkpoints only)

    # ----- construction / persistence -------------------------------------------------------------
    @classmethod
    def build(cls, cfg: VLMConfig) -> VLMCore:
        """A fresh tiny model (random weights, offline tokenizer), or the one saved in `cfg.pretrained_dir`
        (loaded with `cfg`'s dtype/device/checkpointing/LoRA options)."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        if cfg.pretrained_dir:
            return cls.load(cfg.pretrained_dir, cfg)
        cfg.check_image_hw()
        tokenizer = build_tokenizer(cfg.vocab_size)
        model: Any = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg, tokenizer))
        return cls(model.to(cfg.torch_dtype()), tokenizer, cfg)._apply_options(cfg)

    @classmethod
    def load(cls, path: str | Path, options: VLMConfig | None = None) -> VLMCore:
        """Load model + tokenizer (+ our `VLMConfig`) from a local directory; nothing is downloaded.

        Two layouts: a directory written by `save` (our tokenizer and image preprocessing), or a foreign
        checkpoint in the public Qwen2.5-VL release layout (config.json, preprocessor_config.json, tokenizer
        files, sharded safetensors + index): then the checkpoint's own `AutoProcessor` (its resizing,
        min/max pixels, normalisation, image-token count) and tokenizer are used, and `options.image_hw` is
        the camera size the role feeds. `options` supplies dtype, device, gradient checkpointing and LoRA.
        """
        from transformers import Qwen2_5_VLForConditionalGeneration

        opts = options if options is not None else VLMConfig()
        p = Path(path)
        if not p.is_dir() or not (p / "config.json").exists():
            raise FileNotFoundError(
                f"VLMCore.load: {p} is not a saved VLM (no config.json). Set vlm.pretrained_dir to a directory "
                "written by VLMCore.save (or holding local Qwen2.5-VL weights), or leave it empty for a fresh model."
            )
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(p), local_files_only=True, dtype=opts.torch_dtype()
        )
        load_opts = {f: getattr(opts, f) for f in LOAD_OPTIONS}
        if (p / VLM_CONFIG_FILE).exists():
            raw = json.loads((p / VLM_CONFIG_FILE).read_text())
            raw["image_hw"] = tuple(raw["image_hw"])
            raw = {k: v for k, v in raw.items() if k in VLMConfig.__dataclass_fields__}
            processor = load_processor(p) if (p / PROCESSOR_FILE).exists() else None  # a saved foreign model
            if processor is not None:  # camera size: the options', or (left at the default) the saved size,
                # which is already the processor's resize of the camera the model was saved with
                camera = raw["image_hw"] if tuple(opts.image_hw) == VLMConfig().image_hw else opts.image_hw
                raw["image_hw"] = processed_hw(processor, camera)
            cfg = VLMConfig(**{**raw, **load_opts, "pretrained_dir": str(p)})
            tokenizer = load_tokenizer(p) if processor is None else processor.tokenizer
            core = cls(model, tokenizer, cfg)
            core.processor = processor
            return core._apply_options(cfg)
        # foreign Qwen2.5-VL weights: the checkpoint's processor + tokenizer, geometry from its config
        processor = load_processor(p)
        qc: Any = model.config
        tc, vc = qc.text_config, qc.vision_config
        cfg = VLMConfig(
            pretrained_dir=str(p), hidden_size=tc.hidden_size, num_layers=tc.num_hidden_layers,
            num_heads=tc.num_attention_heads, num_kv_heads=tc.num_key_value_heads,
            intermediate_size=tc.intermediate_size, vision_depth=vc.depth, vision_hidden_size=vc.hidden_size,
            vision_heads=vc.num_heads, vision_intermediate_size=vc.intermediate_size, patch_size=vc.patch_size,
            merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size,
            image_hw=processed_hw(processor, opts.image_hw), vocab_size=len(processor.tokenizer), **load_opts,
        )  # fmt: skip
        core = cls(model, processor.tokenizer, cfg)
        core.processor = processor
        return core._apply_options(cfg)

    def _apply_options(self, cfg: VLMConfig) -> VLMCore:
        """Device placement, gradient checkpointing and LoRA adapters (`peft`) from `cfg`."""
        model: Any = self.model
        if cfg.device:
            from drivedistill.utils.runtime import select_device

            model.to(select_device(cfg.device))
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            self.model.config.use_cache = False
        if cfg.lora_rank:
            self.add_lora(cfg)
        return self

    def add_lora(self, cfg: VLMConfig) -> None:
        """Inject LoRA adapters (rank `cfg.lora_rank`) into the modules matching `cfg.lora_targets`, in
        place (the module tree keeps its names); every non-LoRA weight is frozen."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as e:
            raise ImportError(
                "vlm.lora_rank > 0 needs `peft`: pip install 'drivedistill[vlm]' (or pip install peft)"
            ) from e
        lora = LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_targets,
        )  # fmt: skip
        inject_adapter_in_model(lora, self.model)
        if not any("lora_" in n for n, _ in self.model.named_parameters()):
            raise ValueError(f"VLMConfig.lora_targets={cfg.lora_targets!r} matches no module of the model")
        for name, param in self.model.named_parameters():
            param.requires_grad_("lora_" in name)

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with LoRA deltas merged into the base weights (plain Qwen2.5-VL keys)."""
        sd = self.model.state_dict()
        if not any("lora_" in k for k in sd):
            return sd
        from peft.tuners.lora import LoraLayer

        out = {k: v for k, v in sd.items() if "lora_" not in k and ".base_layer." not in k}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                lora: Any = module
                base: Any = lora.get_base_layer()
                weight = base.weight.detach().clone()
                for adapter in lora.active_adapters:
                    weight += lora.get_delta_weight(adapter).to(weight)
                out[f"{name}.weight"] = weight
                if getattr(base, "bias", None) is not None:
                    out[f"{name}.bias"] = base.bias.detach()
        return out

    def save(self, path: str | Path) -> None:
        """Write model (safetensors), tokenizer and `VLMConfig` into `path`."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(p), state_dict=self.merged_state_dict())
        self.tokenizer.save_pretrained(str(p))
        if self.processor is not None:  # a foreign checkpoint stays loadable by transformers' AutoProcessor
            self.processor.save_pretrained(str(p))
            self.processor.image_processor.save_pretrained(str(p))  # preprocessor_config.json, as released
        saved = {k: v for k, v in asdict(self.cfg).items() if k not in LOAD_OPTIONS}
        (p / VLM_CONFIG_FILE).write_text(json.dumps({**saved, "pretrained_dir": ""}, indent=2))

    def add_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add new special tokens (single ids) and resize the embeddings and LM head; returns their ids."""
        self.tokenizer.add_special_tokens(
            {"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False
        )
        self.model.resize_token_embeddings(len(self.tokenizer))
        if self.cfg.lora_rank:  # the new rows must learn: with LoRA, train the embeddings and LM head too
            self.model.get_input_embeddings().weight.requires_grad_(True)
            self.model.get_output_embeddings().weight.requires_grad_(True)
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
        """images (N, 3, H, W) in [0, 1] → pixel_values (N·P, C·tp·p²), image_grid_thw (N, 3).

        A foreign checkpoint's images go through its own image processor (as 8-bit RGB, like a PIL image);
        otherwise through `preprocess_images` (resize to `cfg.image_hw`, CLIP normalisation)."""
        if self.processor is None:
            return preprocess_images(images, self.cfg)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"VLMCore.image_inputs: expected (N, 3, H, W) images, got {tuple(images.shape)}")
        rgb = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out = self.processor.image_processor(images=list(rgb), return_tensors="pt")
        grid = out["image_grid_thw"].to(images.device)
        step = self.cfg.patch_size
        hw = (int(grid[0, 1]) * step, int(grid[0, 2]) * step)
        if hw != tuple(self.cfg.image_hw):
            raise ValueError(
                f"VLMCore.image_inputs: the processor of {self.cfg.pretrained_dir} resizes the {tuple(images.shape[-2:])} "
                f"camera images to {hw}, but the prompts were built for {tuple(self.cfg.image_hw)}; set "
                f"vlm.image_hw to the camera size {tuple(images.shape[-2:])}"
            )
        return out["pixel_values"].to(images.device), grid

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
        self,
        enc: Encoded,
        images: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        add_embeds: torch.Tensor | None = None,
    ) -> VLMOutput:
        """Teacher-forced pass. images (N, 3, H, W), N = images per sample × B in sample-major order.

        `image_embeds` (N·T, D) replaces the encoder's visual tokens when given (then `images` only sets
        the grid). `add_embeds` (B, L, D) is added to the input embeddings after the visual tokens are
        inserted (e.g. `HintChannel.teacher_forced`); the model's weights are not touched.
        """
        pixel_values, grid = self.image_inputs(images)
        if image_embeds is None:
            image_embeds = self.visual_tokens(pixel_values, grid)
        emb, mask = self.embed(enc, image_embeds)
        if add_embeds is not None:
            if add_embeds.shape != emb.shape:
                raise ValueError(
                    f"VLMCore.forward: add_embeds {tuple(add_embeds.shape)} != input embeddings {tuple(emb.shape)}"
                )
            emb = emb + add_embeds.to(emb)
        hidden = self.language_model(emb, self.position_ids(enc, grid), enc.attention_mask)
        return VLMOutput(self.lm_head(hidden), hidden, image_embeds, mask)

    @torch.no_grad()
    def generate(
        self,
        enc: Encoded,
        images: torch.Tensor,
        max_new_tokens: int,
        step_embeds: torch.Tensor | None = None,
    ) -> list[str]:
        """Greedy batched decoding of left-padded prompts → answer texts (special tokens stripped).

        `step_embeds` (B, S, D): added to the input embedding that predicts new token s (s < S) — the
        last prompt token for s = 0, generated token s − 1 after it; the generation-time counterpart of
        `forward`'s `add_embeds` placed by `HintChannel.teacher_forced`. Applied by a forward hook on the
        input embedding for the duration of the call (KV-cached decoding: one prompt call, then one call
        per token; any other call pattern is an error rather than a silent misalignment).
        """
        if bool((enc.attention_mask[:, -1] == 0).any()):
            raise ValueError(
                "VLMCore.generate: prompts must be left-padded (encode(..., padding_side='left'))"
            )
        pixel_values, grid = self.image_inputs(images)
        model: Any = self.model
        handle = None
        if step_embeds is not None:
            if step_embeds.shape[:1] != enc.input_ids.shape[:1] or step_embeds.ndim != 3:
                raise ValueError(
                    f"VLMCore.generate: step_embeds {tuple(step_embeds.shape)} must be (B={enc.input_ids.shape[0]}, S, D)"
                )
            handle = model.get_input_embeddings().register_forward_hook(
                _StepAdder(step_embeds, enc.input_ids.shape[1])
            )
        try:
            out = model.generate(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                mm_token_type_ids=enc.mm_token_type_ids,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        finally:
            if handle is not None:
                handle.remove()
        new = out[:, enc.input_ids.shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


class _StepAdder:
    """Forward hook on the input embedding during `VLMCore.generate`: adds `step_embeds[:, s]` at the
    input that predicts new token s. The first call embeds the (left-padded) prompt of `prompt_len`
    tokens — its last position predicts token 0 —, each later call one generated token."""

    def __init__(self, step_embeds: torch.Tensor, prompt_len: int) -> None:
        self.step_embeds = step_embeds
        self.prompt_len = prompt_len
        self.calls = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        del module, args
        b, n = output.shape[:2]
        expected = self.prompt_len if self.calls == 0 else 1
        if n != expected or b != self.step_embeds.shape[0]:
            raise RuntimeError(
                f"VLMCore.generate: embedding call {self.calls} has shape {(b, n)}, expected ({self.step_embeds.shape[0]}, "
                f"{expected}); the step embeddings need KV-cached, one-token-per-step decoding"
            )
        s = self.calls
        self.calls += 1
        if s >= self.step_embeds.shape[1]:
            return output
        add = torch.zeros_like(output)
        add[:, -1] = self.step_embeds[:, s].to(output)
        return output + add
