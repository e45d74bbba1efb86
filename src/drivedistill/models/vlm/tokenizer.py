"""Offline byte-level BPE tokenizer for the tiny VLMs (no download; trained in code in ~0.05 s).

- Byte-level BPE (`tokenizers`), digits split individually so that every number costs one token per
  character: a plan `[(12.34,-0.56),...]` always has the same token count for the same text shape, and
  the teacher/student answer lengths of EvoDriveVLA match by construction.
- Qwen2.5-VL's special tokens (`<|im_start|>`, `<|image_pad|>`, ...) are single ids.
- Wrapped in `transformers.PreTrainedTokenizerFast`: `save_pretrained(dir)` /
  `load_tokenizer(dir)` (= `AutoTokenizer.from_pretrained`) round-trip offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)


def default_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """Synthetic training text: the prompt vocabulary of `models/vlm/prompt.py` plus random plans/numbers."""
    from drivedistill.models.vlm.prompt import SYSTEM_PROMPT, TRAFFIC_RULES, format_number, format_plan

    rng = np.random.default_rng(seed)
    words = (
        "You are the driving planner of an autonomous car. front camera image future frames at +1 s +2 s +3 s "
        "Past trajectory ego status speed acceleration yaw rate command turn left go straight turn right unknown "
        "Plan the next waypoints x forward y left in metres every 0.5 s answer draft trajectory refine it "
        "user assistant system metres per second radians"
    )
    lines = [SYSTEM_PROMPT, TRAFFIC_RULES, words]
    for _ in range(num_lines):  # free-form numbers (other VLMs' prompts); this rng stream is kept as it was
        n = int(rng.integers(1, 9))
        xy = rng.normal(0, 1, (n, 2)) * rng.choice([0.5, 5.0, 30.0])
        lines.append("[" + ",".join(f"({x:.2f},{y:.2f})" for x, y in xy) + "]")
        lines.append(f"speed {rng.uniform(0, 30):.2f} m/s, acceleration {rng.normal(0, 2):.2f} m/s^2")
    plans = np.random.default_rng(seed + 1)
    for _ in range(num_lines):  # the fixed-width plan text of `format_plan`
        xy = plans.normal(0, 1, (int(plans.integers(1, 9)), 2)) * plans.choice([0.5, 5.0, 30.0])
        lines.append(format_plan(xy))
        lines.append(f"speed {format_number(plans.uniform(0, 30))} m/s")
    return lines


def build_tokenizer(vocab_size: int = 512, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (default: `default_corpus()`) and wrap it.

    Returns a `PreTrainedTokenizerFast` with `pad_token = "<|endoftext|>"`, `eos_token = "<|im_end|>"` and
    the Qwen2.5-VL special tokens as single ids (ids 0 .. 6, in `SPECIAL_TOKENS` order).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"build_tokenizer: vocab_size={vocab_size} is below the byte alphabet + specials ({256 + len(SPECIAL_TOKENS)}); raise it"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=IM_END, clean_up_tokenization_spaces=False
    )
    fast.add_special_tokens(
        {"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (PAD, IM_END)]}
    )
    for t in SPECIAL_TOKENS:
        ids = fast.encode(t, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"build_tokenizer: special token {t} encodes to {len(ids)} ids, expected 1")
    return fast


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The single id of `token`; an unknown token is an error naming it."""
    tid: Any = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id:
        raise KeyError(
            f"token {token!r} is not in the tokenizer; add it with VLMCore.add_tokens([{token!r}])"
        )
    return tid


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained(path)`; a missing directory is an error naming it."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"load_tokenizer: no tokenizer.json in {p}. Save one with `tokenizer.save_pretrained('{p}')` "
            "or build a fresh one with drivedistill.models.vlm.build_tokenizer()."
        )
    tok: Any = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    return tok  # type: ignore[no-any-return]
