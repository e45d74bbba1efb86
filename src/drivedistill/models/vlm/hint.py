"""An answer-aligned hint channel: a text the model may copy, added to its input embeddings token by token.

A language model asked to copy a text from its prompt into its answer has to learn a long-range attention
pattern; a tiny model does not in a few hundred steps (docs/evodrive.md). This channel gives the hint where
the copy is local instead: hint token t (the hint text tokenised like the answer, `<|im_end|>` included) is
embedded by a small learned table and **added to the input embedding at the position that predicts answer
token t** — the last prompt token for t = 0, answer token t − 1 after it. Under teacher forcing that
position is found from the labels; in greedy generation it is the t-th decoding step (`VLMCore.generate`'s
`step_embeds`). With fixed-width plan text the hint has the answer's token layout, so "emit the hint's
token here" is one linear map from the table to the LM head, learnt in tens of steps.

The table covers only the hint alphabet (`hint_alphabet`: the tokens plan text is made of — digits, signs,
brackets, `<|im_end|>`), so it stays small with a 150 k-token pretrained vocabulary; other ids map to a
frozen zero row. It is zero-initialised: a fresh channel leaves the model exactly as it was. Additive on
the embeddings, it works with any Qwen2.5-VL (ours or a release checkpoint) without touching its weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivedistill.models.vlm.prompt import IGNORE_INDEX, Encoded, format_plan
from drivedistill.models.vlm.tokenizer import IM_END

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

HINT_FILE = "hint_channel.safetensors"  # the table + its alphabet, beside the VLM of the model that owns it


def hint_alphabet(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Sorted token ids that plan text (`format_plan`, 2- and 3-digit numbers, every sign pattern, every
    digit) followed by `<|im_end|>` tokenises into — the ids a plan hint can hold."""
    texts = []
    for sx, sy, big in itertools.product((1.0, -1.0), (1.0, -1.0), (False, True)):
        scale = 100.0 if big else 1.0
        xy = np.array([[sx * 12.34, sy * 56.78], [-sx * 90.01, -sy * 2.35], [sy * 4.67, sx * 8.91]]) * scale
        texts.append(format_plan(xy) + IM_END)
    ids = {int(i) for t in texts for i in tokenizer.encode(t, add_special_tokens=False)}
    return sorted(ids)


def tokenize_hints(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """Hint texts → token ids, tokenised exactly as `encode` tokenises answers (text + `<|im_end|>`)."""
    return [list(tokenizer.encode(t + IM_END, add_special_tokens=False)) for t in texts]


def pad_hints(hints: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Ragged hint ids → (B, S) long, padded with -100 (S = `length` or the longest hint; longer hints
    are cut)."""
    s = max((len(h) for h in hints), default=0) if length is None else length
    out = torch.full((len(hints), s), IGNORE_INDEX, dtype=torch.long)
    for i, h in enumerate(hints):
        n = min(len(h), s)
        out[i, :n] = torch.tensor(list(h[:n]), dtype=torch.long)
    return out


def answer_input_positions(enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the inputs that predict the answer tokens sit: (B, A) positions (answer start − 1 + t) and
    (B, A) validity (t < the row's answer length). Needs `enc.labels` (teacher forcing, either padding)."""
    if enc.labels is None:
        raise ValueError("answer_input_positions: the Encoded has no labels (encode with answers)")
    is_ans = enc.labels != IGNORE_INDEX
    counts = is_ans.sum(1)
    a = int(counts.max()) if len(counts) else 0
    first = is_ans.float().argmax(1)
    slot = torch.arange(a, device=is_ans.device).expand(len(counts), a)
    return (first[:, None] - 1 + slot).clamp(0, is_ans.shape[1] - 1), slot < counts[:, None]


class HintChannel(nn.Module):
    """Learned embedding of hint tokens, added at the answer positions (see the module docstring).

    alphabet: the token ids the table covers (`hint_alphabet`); hidden_size D of the language model.
    """

    def __init__(self, alphabet: Sequence[int], hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        alphabet = sorted({int(i) for i in alphabet})
        if not alphabet or alphabet[-1] >= vocab_size or alphabet[0] < 0:
            raise ValueError(f"HintChannel: alphabet {alphabet[:5]}… must be token ids in [0, {vocab_size})")
        slot = torch.zeros(vocab_size, dtype=torch.long)  # token id → table row; 0 = not in the alphabet
        slot[torch.tensor(alphabet)] = torch.arange(1, len(alphabet) + 1)
        self.register_buffer("slot", slot)
        self.table = nn.Parameter(torch.zeros(len(alphabet) + 1, hidden_size))  # row 0 stays zero

    @property
    def alphabet(self) -> list[int]:
        slot: torch.Tensor = self.slot  # type: ignore[assignment]
        return [int(i) for i in torch.nonzero(slot).flatten()]

    def embed(self, hint_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) hint ids (-100 = none) → (B, S, D) additive embeddings (zero where none / unknown)."""
        slot: torch.Tensor = self.slot  # type: ignore[assignment]
        ids = hint_ids.to(slot.device)
        known = (ids >= 0) & (ids < slot.numel())
        rows = slot[ids.clamp(0, slot.numel() - 1)] * known
        return self.table[rows] * (rows > 0)[..., None].to(self.table.dtype)

    def teacher_forced(self, enc: Encoded, hint_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, D) additive input embeddings for a teacher-forced pass: hint token t at the input that
        predicts answer token t (t < min(hint length, answer length)); zero elsewhere."""
        pos, valid = answer_input_positions(enc)
        b, length = enc.input_ids.shape
        a = pos.shape[1]
        hints = hint_ids[:, :a].to(pos.device)
        if hints.shape[1] < a:
            hints = F.pad(hints, (0, a - hints.shape[1]), value=IGNORE_INDEX)
        emb = self.embed(hints) * valid[..., None].to(self.table.dtype)
        out = emb.new_zeros(b, length, emb.shape[-1])
        # positions are distinct within a row, so scatter_add = placement
        return out.scatter_add(1, pos[..., None].expand_as(emb), emb)

    def save(self, path: str | Path) -> None:
        """Write `HINT_FILE` (table + alphabet slots, safetensors) into `path` atomically."""
        from safetensors.torch import save_file

        from drivedistill.utils.io import atomic_write_with

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_with(Path(path) / HINT_FILE, lambda tmp: save_file(tensors, str(tmp)))

    @classmethod
    def load(cls, path: str | Path) -> HintChannel:
        """The channel saved by `save` in `path` (a clear error if the file is missing or malformed)."""
        from safetensors.torch import load_file

        file = Path(path) / HINT_FILE
        if not file.exists():
            raise FileNotFoundError(
                f"{file}: no hint channel saved here; save the model with its hint channel, or set hint: false"
            )
        try:
            sd = load_file(str(file))
        except Exception as e:  # safetensors raises its own error types on a corrupt header
            raise ValueError(f"{file}: not a readable safetensors file ({e}); re-save the model") from e
        if set(sd) != {"slot", "table"} or sd["table"].ndim != 2 or sd["slot"].ndim != 1:
            raise ValueError(f"{file}: expected tensors 'slot' (V,) and 'table' (K+1, D), got {sorted(sd)}")
        slot, table = sd["slot"], sd["table"]
        alphabet = torch.nonzero(slot).flatten().tolist()
        ch = cls(alphabet, table.shape[1], slot.numel())
        if not torch.equal(ch.slot, slot.long()) or table.shape[0] != len(alphabet) + 1:  # type: ignore[arg-type]
            raise ValueError(f"{file}: the slot map and the table of the hint channel do not match")
        ch.load_state_dict({"slot": slot.long(), "table": table})
        return ch
