"""VLA student: a tiny Qwen2.5-VL that reads the camera + ego state as a prompt and writes the plan as text.

Prompt (models/vlm/prompt.py): the front camera, the past trajectory and ego status (unless
`use_ego_status=False`), the command and fixed traffic-rule text. Answer: `[(x1,y1),...,(xN,yN)]`,
2 decimals, **x forward, y left** [m] in the current ego frame, every 0.5 s; N = `num_poses` (6 = the
nuScenes 3 s horizon, EvoDriveVLA's format; 8 = 4 s). Trained with next-token CE by `vla_sft` /
`evodrive`; planned by greedy batched decoding.

`plan_text="residual"` (the default): the answer holds the plan **minus the constant-speed plan of the
ego status** (x = v·t, y = 0, the fallback below), so the model writes small offsets (mostly "+00.xx")
instead of turning the speed into metres itself; the decoded plan is offsets + constant-speed plan.
Without ego status the constant-speed plan is standing still, i.e. the residual is the absolute plan.
`plan_text="residual_arc"`: offsets from the constant speed **and yaw rate** arc of the ego status (the
`constant_velocity` baseline's plan) instead of the straight line, so a curve the ego is already in
costs no lateral offset. `plan_text="absolute"` writes the waypoints themselves (the earlier format).

Decoding is parsed strictly. An unparsable answer is counted in `decode_stats`, its raw text is kept in
`last_failures` (and logged), and it is replaced by the **fallback plan** — constant speed straight ahead
from the ego status (x = v·t, y = 0; standing still when `use_ego_status=False`) — never dropped.
Plans of 6 poses are extended to 8 by constant-velocity extrapolation of the last two poses; yaw is the
heading of each segment (atan2 of the step from the previous pose).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from drivedistill.config import check
from drivedistill.models.students.base import Student, StudentConfig
from drivedistill.models.vlm import (
    Encoded,
    VLMConfig,
    VLMCore,
    VLMOutput,
    chat_prompt,
    encode,
    format_plan,
    parse_plan,
    user_text,
)
from drivedistill.registry import register
from drivedistill.types import DT, NUM_FUTURE, AgentInputBatch, PlanOutput

log = logging.getLogger(__name__)


@dataclass
class VLAConfig(StudentConfig):
    vlm: VLMConfig = field(
        default_factory=VLMConfig
    )  # set vlm.pretrained_dir to the perception-pretrained VLM
    # poses written as text: 6 (3 s, EvoDriveVLA/nuScenes) or 8 (4 s, NAVSIM)
    num_poses: int = field(default=6, metadata=check(ge=1))
    # decoding budget; 0 = answer_token_budget(num_poses)
    max_new_tokens: int = field(default=0, metadata=check(ge=0))
    # offsets from constant speed straight ahead / from the constant speed and yaw rate arc, or waypoints
    plan_text: Literal["residual", "residual_arc", "absolute"] = "residual"

    def __post_init__(self) -> None:
        if self.plan_text not in PLAN_TEXTS:
            raise ValueError(f"VLAConfig.plan_text={self.plan_text!r}: use one of {PLAN_TEXTS}")
        if self.num_poses not in (6, 8):
            raise ValueError(f"VLAConfig.num_poses={self.num_poses}: use 6 (3 s) or 8 (4 s)")
        if self.max_new_tokens < 0:
            raise ValueError(f"VLAConfig.max_new_tokens={self.max_new_tokens} must be >= 0 (0 = automatic)")


PLAN_TEXTS = ("residual", "residual_arc", "absolute")


def poses_from_xy(xy: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) waypoints → (B, NUM_FUTURE, 3) poses: constant-velocity extension to 8, yaw = segment heading."""
    n = xy.shape[1]
    if n < NUM_FUTURE:
        step = xy[:, -1] - (xy[:, -2] if n > 1 else torch.zeros_like(xy[:, -1]))
        k = torch.arange(1, NUM_FUTURE - n + 1, dtype=xy.dtype, device=xy.device).view(1, -1, 1)
        xy = torch.cat([xy, xy[:, -1:] + k * step.unsqueeze(1)], dim=1)
    prev = torch.cat([torch.zeros_like(xy[:, :1]), xy[:, :-1]], dim=1)
    d = xy - prev
    yaw = torch.atan2(d[..., 1], d[..., 0])
    yaw = torch.where(d.norm(dim=-1) < 1e-3, torch.zeros_like(yaw), yaw)  # standing still: keep heading 0
    return torch.cat([xy[:, :NUM_FUTURE], yaw[:, :NUM_FUTURE, None]], dim=-1)


def fallback_xy(
    inputs: AgentInputBatch, num_poses: int, use_ego_status: bool, turn: bool = False
) -> torch.Tensor:
    """(B, num_poses, 2) constant speed straight ahead from ego status [m] (`turn`: along the constant
    yaw rate arc, `constant_velocity.arc_trajectory`); zeros without ego status."""
    if turn and use_ego_status:
        from drivedistill.models.students.constant_velocity import arc_trajectory

        status = inputs.ego_status.float()
        return arc_trajectory(status[:, 0], status[:, 2], num_poses)[..., :2]
    t = torch.arange(1, num_poses + 1, dtype=torch.float32, device=inputs.camera.device) * DT
    speed = (
        inputs.ego_status[:, 0:1].float()
        if use_ego_status
        else torch.zeros_like(inputs.ego_status[:, 0:1]).float()
    )
    return torch.stack([speed * t, torch.zeros_like(speed * t)], dim=-1)


def parse_plans(
    texts: list[str], fallback: torch.Tensor, num_poses: int, who: str, prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Strictly parse answer texts → (xy (B, num_poses, 2), failed (B,) bool); parsed offsets are added
    to `prior` (B, num_poses, 2) when given. An unparsable answer is replaced by its row of `fallback`
    (B, num_poses, 2) and logged with its raw text, never dropped."""
    rows, failed = [], []
    for i, text in enumerate(texts):
        parsed = parse_plan(text, num_poses)
        failed.append(parsed is None)
        if parsed is None:
            rows.append(fallback[i])
        else:
            xy = torch.from_numpy(parsed).to(fallback)
            rows.append(xy if prior is None else xy + prior[i].to(xy))
        if parsed is None:
            log.warning("%s: unparsable plan replaced by the constant-speed fallback: %r", who, text[:200])
    return torch.stack(rows), torch.tensor(failed, dtype=torch.bool)


def answer_token_budget(num_poses: int, tokenizer: Any = None) -> int:
    """Upper bound on the tokens of a plan answer + `<|im_end|>`: 12 per pose ("),(+DD.DD,-DD.DD"), +1 per
    3-digit number, + 4 (brackets, `<|im_end|>`, slack) with this project's tokenizer. With `tokenizer`
    (e.g. a pretrained Qwen2.5-VL's, which merges punctuation differently) the bound is at least the
    longest of a few extreme answers as that tokenizer encodes them, + 4."""
    budget = 14 * num_poses + 4
    return budget if tokenizer is None else max(budget, _longest_plan_tokens(num_poses, tokenizer) + 4)


@functools.lru_cache(maxsize=16)
def _longest_plan_tokens(num_poses: int, tokenizer: Any) -> int:
    """Tokens of the longest of a few extreme plan answers (+ `<|im_end|>`) under `tokenizer`, cached per
    tokenizer object: the budget is asked for on every decode and every distillation step."""
    extremes = [np.full((num_poses, 2), v) for v in (-99.99, 99.99, 0.0, -100.0)]
    extremes.append(np.tile([[-99.99, 99.99]], (num_poses, 1)))
    return max(
        len(tokenizer(format_plan(xy) + "<|im_end|>", add_special_tokens=False)["input_ids"])
        for xy in extremes
    )


def plan_answers(trajectory: torch.Tensor, num_poses: int, prior: torch.Tensor | None = None) -> list[str]:
    """(B, 8, 3) target poses → answer texts of the first `num_poses` (x, y) (student and oracle share
    it); `prior` (B, num_poses, 2) [m] is subtracted first (plan_text "residual": the fallback plan)."""
    xy = trajectory[:, :num_poses, :2]
    if prior is not None:
        xy = xy - prior.to(xy)
    return [format_plan(p) for p in xy.detach().cpu().numpy()]


def fallback_plan(
    inputs: AgentInputBatch, num_poses: int, use_ego_status: bool, plan_text: str
) -> torch.Tensor:
    """The plan that replaces an unparsable answer: along the arc for "residual_arc", straight otherwise."""
    return fallback_xy(inputs, num_poses, use_ego_status, turn=plan_text == "residual_arc")


def plan_prior(
    inputs: AgentInputBatch, num_poses: int, use_ego_status: bool, plan_text: str
) -> torch.Tensor | None:
    """The plan the answer is written relative to: the fallback plan for "residual" (straight) and
    "residual_arc" (the constant yaw rate arc), None for "absolute"."""
    if plan_text == "absolute":
        return None
    return fallback_plan(inputs, num_poses, use_ego_status, plan_text)


class VLAStudent(Student):
    """Tiny Qwen2.5-VL planner writing its plan as text (see the module docstring)."""

    default_method = "vla_sft"

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.core = VLMCore.build(cfg.vlm)
        self.feature_dim = self.core.hidden_size
        self.decode_stats = {"decoded": 0, "parse_failures": 0}
        self.last_failures: list[str] = []  # raw texts of the last batch's unparsable answers

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens or answer_token_budget(self.cfg.num_poses, self.core.tokenizer)

    # ----- prompts -------------------------------------------------------------------------------
    def user_texts(self, inputs: AgentInputBatch) -> list[str]:
        """User turns for a batch (camera placeholder, ego history/status if allowed, command)."""
        hist = inputs.ego_history.detach().cpu().numpy()
        status = inputs.ego_status.detach().cpu().numpy()
        ego = self.cfg.use_ego_status
        return [
            user_text(hist[i] if ego else None, status[i] if ego else None, int(inputs.command[i]), self.cfg.num_poses, self.core.cfg.tokens_per_image, plan_text=self.cfg.plan_text)
            for i in range(inputs.batch_size)
        ]  # fmt: skip

    def prior(self, inputs: AgentInputBatch) -> torch.Tensor | None:
        """(B, num_poses, 2) the plan the answer is relative to (None: absolute waypoints)."""
        return plan_prior(inputs, self.cfg.num_poses, self.cfg.use_ego_status, self.cfg.plan_text)

    def answers(self, inputs: AgentInputBatch, trajectory: torch.Tensor) -> list[str]:
        """(B, 8, 3) target poses → answer texts of the first `num_poses` (x, y) (minus the prior)."""
        return plan_answers(trajectory, self.cfg.num_poses, self.prior(inputs))

    def encode_train(self, inputs: AgentInputBatch, trajectory: torch.Tensor) -> Encoded:
        """Right-padded prompt + GT answer with labels on the answer tokens (teacher forcing)."""
        prompts = [chat_prompt(u) for u in self.user_texts(inputs)]
        return encode(self.core.tokenizer, prompts, self.answers(inputs, trajectory))

    def teacher_forced(self, inputs: AgentInputBatch, trajectory: torch.Tensor) -> tuple[Encoded, VLMOutput]:
        """One differentiable pass over prompt + GT answer; returns the encoding and the VLM outputs."""
        enc = self.encode_train(inputs, trajectory)
        return enc, self.core(enc, inputs.camera)

    # ----- planning ------------------------------------------------------------------------------
    def decode(self, inputs: AgentInputBatch) -> tuple[torch.Tensor, list[str], torch.Tensor, VLMOutput]:
        """Greedy decoding → (xy (B, num_poses, 2), raw texts, failed (B,) bool, prompt pass outputs)."""
        prompts = [chat_prompt(u) for u in self.user_texts(inputs)]
        enc = encode(self.core.tokenizer, prompts, padding_side="left")
        prompt_out = self.core(enc, inputs.camera)
        texts = self.core.generate(enc, inputs.camera, self.max_new_tokens)
        fallback = fallback_plan(inputs, self.cfg.num_poses, self.cfg.use_ego_status, self.cfg.plan_text)
        xy, failed = parse_plans(texts, fallback, self.cfg.num_poses, "vla", self.prior(inputs))
        self.decode_stats["decoded"] += len(texts)
        self.decode_stats["parse_failures"] += int(failed.sum())
        self.last_failures = [t for t, f in zip(texts, failed.tolist()) if f]
        return xy, texts, failed, prompt_out

    def forward(self, inputs: AgentInputBatch) -> PlanOutput:
        """Plan by greedy decoding. trajectory (B, 8, 3) ego frame [m, m, rad]; features:
        "plan_query" (B, D) last-layer state of the final prompt token, "scene_tokens" (B, T, D) last-layer
        states at the image tokens, "parse_failed" (B,) bool."""
        xy, _, failed, out = self.decode(inputs)
        b = inputs.batch_size
        scene = out.hidden[out.image_mask].view(b, -1, out.hidden.shape[-1])
        return PlanOutput(
            poses_from_xy(xy),
            {"plan_query": out.hidden[:, -1], "scene_tokens": scene, "parse_failed": failed},
        )


@register("student", "vla", VLAConfig)
def build(cfg: VLAConfig) -> VLAStudent:
    return VLAStudent(cfg)
