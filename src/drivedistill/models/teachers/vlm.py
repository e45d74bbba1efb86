"""LatentVLA teacher: a Qwen2.5-VL that predicts the 12 latent ego-action tokens from the camera + instruction.

The latent action codes of the LAM (models/latent_action/) are added to the VLM's vocabulary as 16 new
special tokens `<|act_0|>` … `<|act_15|>` (embeddings resized). Training is next-token NLL on the answer

    <|im_start|>user\nFront camera: <image>. Ego status: speed 12.30 m/s. Command: go straight.
    Predict the latent actions.<|im_end|>\n<|im_start|>assistant\n<|act_3|><|act_9|>…(12)<|im_end|>

The teacher reads `AgentInput` only (current camera, speed, command), so it may run at inference
(the "latent_vla" method). A fresh tiny model is built offline by default; `pretrained` loads a local
directory (a saved teacher, or real Qwen2.5-VL weights); nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from drivedistill.config import check
from drivedistill.data.dataset import SceneDataset
from drivedistill.models.latent_action.encode import EGO_CODES_KEY
from drivedistill.models.vlm import IGNORE_INDEX, VLMConfig, VLMCore, chat_prompt, encode
from drivedistill.models.vlm.prompt import COMMAND_TEXT, Encoded, image_block
from drivedistill.registry import register
from drivedistill.types import AgentInputBatch, Batch

TEACHER_CONFIG_FILE = "latent_vla_teacher.json"
TEACHER_LOGITS_KEY = "latent_vla/teacher_logits"  # Batch.extras key: (B, L, K) cached teacher logits


def action_token(code: int) -> str:
    return f"<|act_{code}|>"


@dataclass
class VLMTeacherConfig:
    """The latent-action VLM teacher (kind "teacher", name "vlm")."""

    vlm: VLMConfig = field(
        default_factory=VLMConfig
    )  # architecture of a fresh model (unused with `pretrained`)
    pretrained: str = ""  # local dir: a saved VLMTeacher or Qwen2.5-VL weights; "" = fresh tiny model
    # ego codebook size of the latent action model (paper: 16)
    num_codes: int = field(default=16, metadata=check(ge=2))
    # latent action tokens per sample (LAM: 3 transitions × 4 tokens)
    sequence_length: int = field(default=12, metadata=check(ge=1))
    use_ego_status: bool = True  # write the speed into the instruction
    codes_key: str = EGO_CODES_KEY  # Batch.extras key of the target codes (B, sequence_length)

    def __post_init__(self) -> None:
        if self.vlm.pretrained_dir:
            raise ValueError(
                "VLMTeacherConfig.vlm.pretrained_dir: set teacher.pretrained instead (one place for the path)"
            )
        if self.pretrained and not (Path(self.pretrained) / "config.json").is_file():
            raise FileNotFoundError(
                f"VLMTeacherConfig.pretrained={self.pretrained!r}: no config.json there. Point --teacher.pretrained "
                "at a directory written by VLMTeacher.save or holding local Qwen2.5-VL weights, or leave it empty "
                "for a fresh tiny model trained from scratch."
            )
        if self.num_codes < 2 or self.sequence_length < 1:
            raise ValueError(f"VLMTeacherConfig: num_codes={self.num_codes} must be ≥ 2, sequence_length ≥ 1")


@dataclass
class TeacherFeatures:
    """Free-running teacher outputs for one batch.

    visual  (B, Nv, D) last hidden states of the image tokens
    actions (B, L, D)  last hidden states of the generated action tokens
    codes   (B, L) long greedy codes (decoding constrained to the K action tokens)
    logits  (B, L, K)  action-token logits at each step
    """

    visual: torch.Tensor
    actions: torch.Tensor
    codes: torch.Tensor
    logits: torch.Tensor


class VLMTeacher(nn.Module):
    """`VLMCore` + the action vocabulary. `action_ids` (K,) long: vocabulary ids of `<|act_k|>`."""

    action_ids: torch.Tensor

    def __init__(self, core: VLMCore, cfg: VLMTeacherConfig) -> None:
        super().__init__()
        self.core = core
        self.cfg = cfg
        ids = core.add_tokens([action_token(k) for k in range(cfg.num_codes)])
        self.register_buffer("action_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    # ----- prompts ---------------------------------------------------------------------------------
    def prompts(self, inputs: AgentInputBatch) -> list[str]:
        speed = inputs.ego_status[:, 0].tolist()
        out = []
        for i, cmd in enumerate(inputs.command.tolist()):
            text = "Front camera: " + image_block(1, self.core.cfg.tokens_per_image) + "."
            if self.cfg.use_ego_status:
                text += f" Ego status: speed {speed[i]:.2f} m/s."
            text += f" Command: {COMMAND_TEXT[int(cmd)]}. Predict the latent actions."
            out.append(chat_prompt(text))
        return out

    def encode(self, inputs: AgentInputBatch, codes: torch.Tensor, padding_side: str = "right") -> Encoded:
        """Prompts + answers of codes (B, L) → token tensors on the inputs' device."""
        if codes.shape != (inputs.batch_size, self.cfg.sequence_length):
            raise ValueError(
                f"VLMTeacher: codes must be (B, {self.cfg.sequence_length}), got {tuple(codes.shape)}"
            )
        if int(codes.max()) >= self.cfg.num_codes or int(codes.min()) < 0:
            raise ValueError(
                f"VLMTeacher: codes must lie in [0, {self.cfg.num_codes}); check teacher.num_codes vs the LAM"
            )
        answers = ["".join(action_token(int(c)) for c in row) for row in codes.tolist()]
        enc = encode(self.core.tokenizer, self.prompts(inputs), answers, padding_side=padding_side)
        dev = inputs.camera.device
        return Encoded(
            enc.input_ids.to(dev),
            enc.attention_mask.to(dev),
            None if enc.labels is None else enc.labels.to(dev),
            enc.mm_token_type_ids.to(dev),
        )

    # ----- teacher forcing -------------------------------------------------------------------------
    def answer_logits(self, enc: Encoded, logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits (B, T, V) → (B, L, V) at the positions predicting each answer code."""
        assert enc.labels is not None
        is_action = torch.isin(enc.labels, self.action_ids)
        pos = is_action.nonzero()[:, 1].view(-1, self.cfg.sequence_length) - 1  # logits at p-1 predict p
        return torch.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))

    def action_logits(self, inputs: AgentInputBatch, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced action logits (B, L, K): p(code_j | image, instruction, codes_<j)."""
        enc = self.encode(inputs, codes)
        return self.answer_logits(enc, self.core(enc, inputs.camera).logits)[..., self.action_ids]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """NLL of the answer (12 action tokens + `<|im_end|>`), plus action-token accuracy and perplexity."""
        if self.cfg.codes_key not in batch.extras:
            raise KeyError(
                f"VLMTeacher.losses: Batch.extras lacks {self.cfg.codes_key!r}; run encode_latent_actions first"
            )
        codes = batch.extras[self.cfg.codes_key].long()
        enc = self.encode(batch.inputs, codes)
        assert enc.labels is not None
        logits = self.core(enc, batch.inputs.camera).logits
        nll = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), enc.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )
        full = self.answer_logits(enc, logits.detach())  # (B, L, V)
        targets = self.action_ids[codes]
        action_nll = F.cross_entropy(full.flatten(0, 1), targets.flatten())
        return {
            "loss": nll,
            "action_nll": action_nll,
            "perplexity": action_nll.exp(),  # over the full vocabulary at the action positions
            "token_acc": (full.argmax(-1) == targets).float().mean(),
            "action_acc": (full[..., self.action_ids].argmax(-1) == codes).float().mean(),  # among K actions
        }

    # ----- free running (inference) ----------------------------------------------------------------
    @torch.no_grad()
    def features(self, inputs: AgentInputBatch) -> TeacherFeatures:
        """Greedy decoding of L action tokens (constrained to the K action ids) with a KV cache."""
        from transformers import DynamicCache

        b, length = inputs.batch_size, self.cfg.sequence_length
        placeholder = torch.zeros(b, length, dtype=torch.long, device=inputs.camera.device)
        enc = self.encode(inputs, placeholder, padding_side="left")  # rows end together: answers align
        pixel_values, grid = self.core.image_inputs(inputs.camera)
        emb, image_mask = self.core.embed(enc, self.core.visual_tokens(pixel_values, grid))
        pos = self.core.position_ids(enc, grid)
        prompt_len = enc.input_ids.shape[1] - (length + 1)  # answer = L actions + <|im_end|>
        lm = self.core.model.model.language_model
        embed_tokens = self.core.model.get_input_embeddings()
        cache = DynamicCache()

        def step(e: torch.Tensor, start: int) -> torch.Tensor:
            end = start + e.shape[1]
            out = lm(
                inputs_embeds=e,
                position_ids=pos[:, :, start:end],
                attention_mask=enc.attention_mask[:, :end],
                past_key_values=cache,
                use_cache=True,
            )
            return out.last_hidden_state  # type: ignore[no-any-return]

        hidden = step(emb[:, :prompt_len], 0)
        visual = hidden[image_mask[:, :prompt_len]].view(b, -1, hidden.shape[-1])
        logits, codes, actions = [], [], []
        for j in range(length):
            step_logits = self.core.lm_head(hidden[:, -1])[:, self.action_ids]
            code = step_logits.argmax(-1)
            logits.append(step_logits)
            codes.append(code)
            hidden = step(embed_tokens(self.action_ids[code])[:, None], prompt_len + j)
            actions.append(hidden[:, -1])
        return TeacherFeatures(visual, torch.stack(actions, 1), torch.stack(codes, 1), torch.stack(logits, 1))

    # ----- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Model + tokenizer (with the action tokens) + teacher config into a directory."""
        self.core.save(path)
        meta = {k: v for k, v in asdict(self.cfg).items() if k not in ("vlm", "pretrained")}
        (Path(path) / TEACHER_CONFIG_FILE).write_text(json.dumps(meta, indent=2))


@register("teacher", "vlm", VLMTeacherConfig)
def build(cfg: VLMTeacherConfig) -> VLMTeacher:
    """A fresh tiny teacher, or the one in `cfg.pretrained` (a saved teacher's own settings win)."""
    if not cfg.pretrained:
        return VLMTeacher(VLMCore.build(cfg.vlm), cfg)
    meta_path = Path(cfg.pretrained) / TEACHER_CONFIG_FILE
    if meta_path.is_file():
        cfg = VLMTeacherConfig(pretrained=cfg.pretrained, **json.loads(meta_path.read_text()))
    return VLMTeacher(VLMCore.load(cfg.pretrained, cfg.vlm), cfg)  # cfg.vlm: camera size, dtype, LoRA, …


def load_teacher(path: str | Path) -> VLMTeacher:
    """A teacher saved with `VLMTeacher.save`."""
    return build(VLMTeacherConfig(pretrained=str(path)))


@torch.no_grad()
def cache_teacher_logits(
    teacher: VLMTeacher, dataset: SceneDataset, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """Teacher-forced action logits of every sample: token → (L, K) float32 (temperature 1).

    The dataset must carry the LAM codes in its extras (`teacher.cfg.codes_key`). Used as the
    `TEACHER_LOGITS_KEY` extra by "latent_vla_distill", so distillation never runs the VLM.
    """
    if teacher.cfg.codes_key not in dataset.extras:
        raise KeyError(
            f"cache_teacher_logits: the dataset lacks the extra {teacher.cfg.codes_key!r} (LAM codes)"
        )
    was_training = teacher.training
    teacher.eval()
    device = teacher.action_ids.device
    out: dict[str, np.ndarray] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate):
        batch = batch.to(device)
        logits = teacher.action_logits(batch.inputs, batch.extras[teacher.cfg.codes_key].long())
        out.update(zip(batch.tokens, logits.float().cpu().numpy()))
    teacher.train(was_training)
    return out
