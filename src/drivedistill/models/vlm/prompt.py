"""Prompts, answers and labels of the driving VLAs (chat layout of Qwen2.5-VL, text only here).

Frame: the plan is written in the **current ego frame, x forward, y left** [m], one pose every 0.5 s —
`[(x1,y1),...,(xN,yN)]` with 2 decimals. Every number is written fixed-width with a sign, `+DD.DD`
(`format_number`: `(+03.20,-00.45)`), so that each digit of each pose sits at the same token offset — a
tiny model learns the regular layout in a few hundred steps, and copying digits from the past trajectory
in the prompt is position-aligned. (EvoDriveVLA's nuScenes text uses X perpendicular / Y forward;
convert at a data-adapter boundary, never here.)

    <|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n
    <|im_start|>user\n{images}{inputs}{TRAFFIC_RULES} {task}[ Draft trajectory: {draft}. Refine it.]<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>

Labels are -100 everywhere except the answer and its closing `<|im_end|>` (the draft of the oracle's
coarse-to-fine pass sits in the prompt, so it is masked by construction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from drivedistill.models.vlm.tokenizer import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START, token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE_INDEX = -100
SYSTEM_PROMPT = "You are the driving planner of an autonomous car."
TRAFFIC_RULES = "Keep a safe distance, stay in a lane, obey the command, avoid collisions."
COMMAND_TEXT = ("turn left", "go straight", "turn right", "unknown")
_NUM = r"([+-]\d{2,3}\.\d{2})"  # what format_number writes for |v| < 1000
_PAIR = rf"\({_NUM},{_NUM}\)"


def format_number(value: float) -> str:
    """Fixed-width signed number with 2 decimals: 3.2 → "+03.20", -0.004 → "+00.00" (no negative zero)."""
    return f"{round(float(value), 2) + 0.0:+06.2f}"


def format_plan(xy: np.ndarray) -> str:
    """(N, 2) x forward, y left [m] → `[(x1,y1),...,(xN,yN)]`, every number `format_number`."""
    pairs = (f"({format_number(x)},{format_number(y)})" for x, y in np.asarray(xy, dtype=np.float64))
    return "[" + ",".join(pairs) + "]"


def parse_plan(text: str, num_poses: int) -> np.ndarray | None:
    """Strict parse of `format_plan` text with exactly `num_poses` pairs → (num_poses, 2) float32, else None.

    Surrounding whitespace is tolerated; anything else (missing pair, extra text, 1 decimal, missing sign
    or leading zero) is a failure.
    """
    m = re.fullmatch(rf"\[{_PAIR}(?:,{_PAIR})*\]", text.strip())
    if m is None:
        return None
    pairs = re.findall(_PAIR, text)
    if len(pairs) != num_poses:
        return None
    return np.array([[float(x), float(y)] for x, y in pairs], dtype=np.float32)


def image_block(num_images: int, tokens_per_image: int) -> str:
    """`<|vision_start|><|image_pad|>×n<|vision_end|>` for each image."""
    return (VISION_START + IMAGE_PAD * tokens_per_image + VISION_END) * num_images


def user_text(
    ego_history: np.ndarray | None,
    ego_status: np.ndarray | None,
    command: int,
    num_poses: int,
    tokens_per_image: int,
    future_ego_status: np.ndarray | None = None,
    num_future_frames: int = 0,
    future_path: np.ndarray | None = None,
    plan_text: str = "absolute",
) -> str:
    """The user turn (without chat markers) for one sample.

    ego_history (4, 3) past poses at -2.0 … -0.5 s, ego_status (3,) speed/accel/yaw rate; both None when
    the planner runs without ego status. `future_ego_status` (K, 3) and `num_future_frames` are the
    oracle's privileged extras (future frames at +1/+2/+3 s follow the current image); `future_path`
    (N, 2) [m] is the oracle's dead-reckoned future path, written in the answer's own format at the
    very end of the turn, so that every digit of it is a fixed number of tokens before the same digit of
    the answer (a copy is one relative-position attention pattern). `plan_text` = "residual": the task asks for offsets from the
    constant-speed plan (x = v·t, y = 0) instead of absolute waypoints; "residual_arc" from the constant
    speed and yaw rate arc.
    """
    parts = ["Front camera: " + image_block(1, tokens_per_image) + "."]
    if num_future_frames:
        parts.append(
            " Future front frames at +1 s, +2 s, +3 s: "
            + image_block(num_future_frames, tokens_per_image)
            + "."
        )
    if ego_history is not None and ego_status is not None:
        parts.append(
            f" Past trajectory (x forward, y left, m, every 0.5 s): {format_plan(ego_history[:, :2])}."
        )
        parts.append(
            f" Ego status: speed {format_number(ego_status[0])} m/s, acceleration {format_number(ego_status[1])} m/s^2,"
            f" yaw rate {format_number(ego_status[2])} rad/s."
        )
    if future_ego_status is not None:
        fes = ",".join("(" + ",".join(format_number(v) for v in row) + ")" for row in future_ego_status)
        parts.append(f" Future ego status (speed, acceleration, yaw rate every 0.5 s): [{fes}].")
    parts.append(f" Command: {COMMAND_TEXT[int(command)]}. {TRAFFIC_RULES}")
    if plan_text == "residual":
        parts.append(
            f" Plan the next {num_poses} waypoints as offsets from constant speed straight ahead"
            " (x forward, y left, metres, every 0.5 s)."
        )
    elif plan_text == "residual_arc":
        parts.append(
            f" Plan the next {num_poses} waypoints as offsets from constant speed and yaw rate"
            " (x forward, y left, metres, every 0.5 s)."
        )
    else:
        parts.append(f" Plan the next {num_poses} waypoints (x forward, y left, metres, every 0.5 s).")
    if future_path is not None:  # last: each of its digits sits at a fixed distance from the answer's
        parts.append(f" Future path from the future ego status: {format_plan(future_path)}.")
    return "".join(parts)


def chat_prompt(user: str, draft: str | None = None) -> str:
    """Full prompt up to and including the assistant header; `draft` = coarse plan to refine."""
    if draft is not None:
        user = f"{user} Draft trajectory: {draft}. Refine it."
    return f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


@dataclass
class Encoded:
    """Token tensors of a batch of prompts (+ answers).

    input_ids (B, L) long; attention_mask (B, L) long; labels (B, L) long (-100 off the answer) or None;
    mm_token_type_ids (B, L) int (1 on `<|image_pad|>`, else 0; Qwen2.5-VL's 3-D rotary needs it).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    mm_token_type_ids: torch.Tensor


def encode(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    padding_side: str = "right",
) -> Encoded:
    """Tokenise prompts (+ answers followed by `<|im_end|>`) and pad.

    Training: answers given, right padding, labels on the answer tokens. Generation: answers None, left
    padding (every row ends where the answer starts).
    """
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"encode: {len(prompts)} prompts but {len(answers)} answers")
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    image_id = token_id(tokenizer, IMAGE_PAD)
    rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
        a_ids = tokenizer.encode(answers[i] + IM_END, add_special_tokens=False) if answers is not None else []
        rows.append(p_ids + a_ids)
        label_rows.append([IGNORE_INDEX] * len(p_ids) + a_ids)
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        sl = slice(length - len(r), length) if padding_side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        labels[i, sl] = torch.tensor(lab)
        mask[i, sl] = 1
    mm = (ids == image_id).int()
    return Encoded(ids, mask, labels if answers is not None else None, mm)
