"""EvoDriveVLA's future-aware oracle teacher: the VLA architecture plus future frames and future ego status.

The **only** model that reads `Privileged.future_frames`. Its prompt holds the current front camera,
the front frames at +1/+2/+3 s, the past trajectory, ego status, the future ego status (speed,
acceleration, yaw rate at 0.5 … 3 s) and the command; its answer is the same plan text as the student's
(token for token, so EvoDrive's token-level KD applies).

The **future path** — the path dead-reckoned from the current and future ego status (`dead_reckon`),
written in the answer's own format (offsets from constant speed when `plan_text="residual"`) — reaches it
through the **hint channel** (`hint=true`, default; models/vlm/hint.py): hint token t is embedded by a
small zero-initialised table and added to the input embedding at the position that predicts answer
token t, in teacher forcing and greedy generation alike. The oracle then only learns "emit the hint's
token, corrected by what the future frames and status say" — a local map, learnt in tens of steps.
`future_path=true` also (or instead, with hint=false) writes the path as text at the end of the prompt,
the earlier design: there a 2-layer model has to learn a ~75-token copy across ~500 tokens of prompt,
which it did not in a few hundred steps (ST-P3 L2 1.65 m where the path alone gives 0.18 m;
docs/evodrive.md, docs/LOG.md).

Training (`losses`, run by the generic loop): next-token CE; with probability `refine_prob` per step the
teacher's own teacher-forced argmax answer is inserted after the prompt as a draft ("Draft trajectory:
… Refine it.") and the CE is taken on the refined pass (the draft sits in the prompt → masked).

Distillation (`candidates`): a coarse pass and a refined pass (draft = the coarse argmax), each with
`num_samples` MC-dropout samples (dropout p on the final hidden states before the LM head); candidates
are scored by CE to the GT answer tokens (see methods/evodrive.py for the selection).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from drivedistill.config import check
from drivedistill.models.students.vla import (
    PLAN_TEXTS,
    answer_token_budget,
    fallback_plan,
    parse_plans,
    plan_answers,
    plan_prior,
)
from drivedistill.models.vlm import (
    IGNORE_INDEX,
    Encoded,
    VLMConfig,
    VLMCore,
    VLMOutput,
    chat_prompt,
    encode,
    format_plan,
    user_text,
)
from drivedistill.models.vlm.hint import HINT_FILE, HintChannel, hint_alphabet, pad_hints, tokenize_hints
from drivedistill.registry import register
from drivedistill.types import DT, Batch

ORACLE_CONFIG_FILE = "oracle_config.json"  # the OracleConfig an oracle was trained with (beside the VLM)


@dataclass
class OracleConfig:
    vlm: VLMConfig = field(
        default_factory=VLMConfig
    )  # same architecture as the student (start from the perception VLM)
    num_poses: int = field(default=6, metadata=check(ge=1))  # must equal the student's
    # probability of a coarse-to-fine step in training
    refine_prob: float = field(default=0.5, metadata=check(ge=0, le=1))
    # future ego status at 0.5 … 3.0 s in the prompt
    future_status_steps: int = field(default=6, metadata=check(ge=0))
    # the future path dead-reckoned from the ego status, in the answer's format, at the end of the prompt
    future_path: bool = False
    # the same path through the hint channel: token t added to the input that predicts answer token t
    hint: bool = True
    plan_text: Literal["residual", "residual_arc", "absolute"] = (
        "residual"  # = the student's (answers must match)
    )

    def __post_init__(self) -> None:
        if self.plan_text not in PLAN_TEXTS:
            raise ValueError(f"OracleConfig.plan_text={self.plan_text!r}: use one of {PLAN_TEXTS}")
        if not 0.0 <= self.refine_prob <= 1.0:
            raise ValueError(f"OracleConfig.refine_prob={self.refine_prob} must be in [0, 1]")
        if self.num_poses not in (6, 8):
            raise ValueError(f"OracleConfig.num_poses={self.num_poses}: use 6 or 8 (the student's value)")


@dataclass
class Candidate:
    """One teacher answer under teacher forcing. logits (B, A, V) predicting the A answer tokens;
    hidden (B, A, D) final hidden states at the answer tokens; ce (B,) mean CE to the GT tokens."""

    logits: torch.Tensor
    hidden: torch.Tensor
    ce: torch.Tensor


def dead_reckon(ego_status: torch.Tensor, future_ego_status: torch.Tensor, num_poses: int) -> torch.Tensor:
    """The path the ego status implies: (B, 3) current and (B, K ≥ num_poses, 3) future (speed [m/s],
    acceleration, yaw rate [rad/s]) every DT → (B, num_poses, 2) x forward, y left [m], current ego frame.

    Trapezoidal integration: yaw_k = yaw_{k-1} + DT·(ω_{k-1} + ω_k)/2, step length DT·(v_{k-1} + v_k)/2
    along the mean heading of the step.
    """
    status = torch.cat([ego_status[:, None], future_ego_status[:, :num_poses]], dim=1).float()  # (B, N+1, 3)
    v, w = status[..., 0], status[..., 2]
    yaw = torch.cat([torch.zeros_like(w[:, :1]), torch.cumsum(DT * (w[:, 1:] + w[:, :-1]) / 2, dim=1)], dim=1)
    heading = (yaw[:, 1:] + yaw[:, :-1]) / 2
    step = DT * (v[:, 1:] + v[:, :-1]) / 2
    return torch.cumsum(torch.stack([step * torch.cos(heading), step * torch.sin(heading)], dim=-1), dim=1)


def answer_slices(
    enc: Encoded, out_logits: torch.Tensor, hidden: torch.Tensor, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the answer tokens, left-aligned and padded to `length` (default: the longest answer).

    Returns logits (B, A, V) shifted to predict each answer token, hidden (B, A, D) at the answer tokens,
    targets (B, A) with -100 on padding. Rows differ in length when their numbers have more digits.
    """
    assert enc.labels is not None
    is_ans = enc.labels != IGNORE_INDEX
    counts = is_ans.sum(1)
    a = int(counts.max()) if length is None else length
    if int(counts.max()) > a:
        raise ValueError(
            f"answer of {int(counts.max())} tokens exceeds the padded length {a}; raise num_poses' token budget"
        )
    b = is_ans.shape[0]
    slot = torch.arange(a, device=is_ans.device).expand(b, a)
    valid = slot < counts[:, None]
    first = is_ans.float().argmax(1)  # answers are contiguous: first answer position per row
    pos = (first[:, None] + slot).clamp_max(is_ans.shape[1] - 1)
    logits = out_logits.gather(1, (pos - 1).clamp_min(0)[..., None].expand(b, a, out_logits.shape[-1]))
    hid = hidden.gather(1, pos[..., None].expand(b, a, hidden.shape[-1]))
    target = torch.where(valid, enc.labels.gather(1, pos), torch.full_like(pos, IGNORE_INDEX))
    return logits * valid[..., None], hid * valid[..., None], target


class OracleTeacher(nn.Module):
    """Future-aware VLA teacher (see the module docstring)."""

    def __init__(self, cfg: OracleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.core = VLMCore.build(cfg.vlm)
        self.hint: HintChannel | None = None
        if cfg.hint:  # a saved channel beside the VLM it was trained with, else a fresh (zero) one
            saved = Path(cfg.vlm.pretrained_dir) / HINT_FILE if cfg.vlm.pretrained_dir else None
            emb: Any = self.core.model.get_input_embeddings()
            self.hint = (
                HintChannel.load(saved.parent)
                if saved is not None and saved.exists()
                else HintChannel(
                    hint_alphabet(self.core.tokenizer), self.core.hidden_size, emb.num_embeddings
                )
            ).to(emb.weight.device)

    def prior(self, batch: Batch) -> torch.Tensor | None:
        """(B, num_poses, 2) the plan the answer is relative to (the student's, from the ego status)."""
        return plan_prior(batch.inputs, self.cfg.num_poses, True, self.cfg.plan_text)

    def answers(self, batch: Batch) -> list[str]:
        """The same answer texts (hence tokens) as the student's."""
        priv = batch.require_privileged("oracle teacher")
        return plan_answers(priv.trajectory, self.cfg.num_poses, self.prior(batch))

    def future_path(self, batch: Batch) -> torch.Tensor:
        """(B, num_poses, 2) the dead-reckoned future path in the answer's frame (minus the prior)."""
        priv = batch.require_privileged("oracle teacher")
        path = dead_reckon(batch.inputs.ego_status, priv.future_ego_status, self.cfg.num_poses)
        prior = self.prior(batch)
        return path if prior is None else path - prior.to(path)

    def hint_ids(self, batch: Batch) -> torch.Tensor | None:
        """(B, S) token ids of the future path in the answer's format (-100 padded), or None without the
        hint channel. When the path equals the GT answer, hint token t == answer token t."""
        if self.hint is None:
            return None
        texts = [format_plan(p) for p in self.future_path(batch).detach().cpu().numpy()]
        return pad_hints(tokenize_hints(self.core.tokenizer, texts))

    def teacher_forced(
        self, enc: Encoded, images: torch.Tensor, hint_ids: torch.Tensor | None, **kw: torch.Tensor
    ) -> VLMOutput:
        """The core's teacher-forced pass with the hint (if any) added at the answer positions."""
        add = None if self.hint is None or hint_ids is None else self.hint.teacher_forced(enc, hint_ids)
        return self.core(enc, images, add_embeds=add, **kw)

    def images(self, batch: Batch) -> torch.Tensor:
        """(B·4, 3, H, W): per sample the current camera then the future frames at +1/+2/+3 s."""
        priv = batch.require_privileged("oracle teacher")
        cur = batch.inputs.camera.unsqueeze(1)
        return torch.cat([cur, priv.future_frames.to(cur)], dim=1).flatten(0, 1)

    def prompts(self, batch: Batch, drafts: list[str] | None = None) -> list[str]:
        priv = batch.require_privileged("oracle teacher")
        hist = batch.inputs.ego_history.detach().cpu().numpy()
        status = batch.inputs.ego_status.detach().cpu().numpy()
        fes = priv.future_ego_status[:, : self.cfg.future_status_steps].detach().cpu().numpy()
        n_future = priv.future_frames.shape[1]
        path = self.future_path(batch).detach().cpu().numpy() if self.cfg.future_path else None
        out = []
        for i in range(batch.inputs.batch_size):
            u = user_text(
                hist[i],
                status[i],
                int(batch.inputs.command[i]),
                self.cfg.num_poses,
                self.core.cfg.tokens_per_image,
                fes[i] if self.cfg.future_status_steps > 0 else None,
                n_future,
                None if path is None else path[i],
                self.cfg.plan_text,
            )
            out.append(chat_prompt(u, None if drafts is None else drafts[i]))
        return out

    def encode(self, batch: Batch, drafts: list[str] | None = None) -> Encoded:
        return encode(self.core.tokenizer, self.prompts(batch, drafts), self.answers(batch))

    def argmax_drafts(self, enc: Encoded, logits: torch.Tensor) -> list[str]:
        """The teacher-forced argmax answer of each row as text (the coarse draft; may be malformed)."""
        pred, _, target = answer_slices(enc, logits, logits[..., :1])
        ids = pred.argmax(-1)
        return [
            str(self.core.tokenizer.decode(row[t != IGNORE_INDEX], skip_special_tokens=True))
            for row, t in zip(ids, target)
        ]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Teacher training step: CE on the coarse pass, or (p = refine_prob) on the refined pass."""
        images = self.images(batch)
        hints = self.hint_ids(batch)
        enc = self.encode(batch)
        out = self.teacher_forced(enc, images, hints)
        refined = bool(torch.rand(()) < self.cfg.refine_prob)
        if refined:
            enc = self.encode(batch, self.argmax_drafts(enc, out.logits.detach()))
            out = self.teacher_forced(enc, images, hints)
        assert enc.labels is not None
        ce = F.cross_entropy(
            out.logits[:, :-1].flatten(0, 1).float(), enc.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )
        return {"loss": ce, "ce": ce.detach(), "refined": torch.tensor(float(refined))}

    @torch.no_grad()
    def candidates(
        self,
        batch: Batch,
        refine: bool,
        num_samples: int,
        dropout: float,
        length: int,
        generator: torch.Generator | None = None,
    ) -> list[Candidate]:
        """[coarse, best-of-dropout coarse, refined, best-of-dropout refined] (the dropout / refined
        entries only when `num_samples > 0` / `refine`). Per sample, the dropout sample with the lowest
        CE to the GT answer is kept."""
        images = self.images(batch)
        hints = self.hint_ids(batch)
        enc = self.encode(batch)
        out = self.teacher_forced(enc, images, hints)
        passes = [(enc, out)]
        if refine:
            enc_r = self.encode(batch, self.argmax_drafts(enc, out.logits))
            passes.append((enc_r, self.teacher_forced(enc_r, images, hints)))
        cands: list[Candidate] = []
        for e, o in passes:
            logits, hidden, target = answer_slices(e, o.logits, o.hidden, length)
            cands.append(Candidate(logits.float(), hidden, _ce(logits, target)))
            if num_samples > 0:
                # the logits of answer token t come from the hidden state at t - 1: drop out those
                _, prev, _ = answer_slices(e, o.logits, torch.roll(o.hidden, 1, dims=1), length)
                best: Candidate | None = None
                for _ in range(num_samples):
                    keep = (torch.rand(prev.shape, generator=generator) >= dropout).to(prev)
                    lg = (
                        self.core.lm_head(prev * keep / (1.0 - dropout)).float()
                        * (target != IGNORE_INDEX)[..., None]
                    )
                    keep_h = (torch.rand(hidden.shape, generator=generator) >= dropout).to(hidden)
                    c = Candidate(lg, hidden * keep_h / (1.0 - dropout), _ce(lg, target))
                    best = c if best is None else select_min_ce([best, c])[0]
                assert best is not None
                cands.append(best)
        return cands

    @torch.no_grad()
    def plan(self, batch: Batch, refine: bool = True) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """The oracle's own plan (its row in the study, a privileged reference like the expert's): greedy
        decoding of the coarse answer, then — `refine` — of the answer to the prompt holding the coarse
        answer as its draft (as in training). Parsed strictly like the student's: unparsable answers take
        the constant-speed fallback and are counted. Returns xy (B, num_poses, 2), texts, failed (B,)."""
        images = self.images(batch)
        budget = answer_token_budget(self.cfg.num_poses, self.core.tokenizer)
        hints = self.hint_ids(batch)
        steps = None if self.hint is None or hints is None else self.hint.embed(hints)
        enc = encode(self.core.tokenizer, self.prompts(batch), padding_side="left")
        texts = self.core.generate(enc, images, budget, steps)
        if refine:
            enc = encode(self.core.tokenizer, self.prompts(batch, texts), padding_side="left")
            texts = self.core.generate(enc, images, budget, steps)
        fallback = fallback_plan(batch.inputs, self.cfg.num_poses, True, self.cfg.plan_text)
        xy, failed = parse_plans(texts, fallback, self.cfg.num_poses, "oracle", self.prior(batch))
        return xy, texts, failed

    def save(self, path: str | Path) -> None:
        """The VLM (`VLMCore.save`) and, beside it, this OracleConfig (prompt and answer format) and the
        hint channel (`HINT_FILE`, safetensors) when it has one."""
        from drivedistill.utils.io import atomic_write_json

        self.core.save(path)
        if self.hint is not None:
            self.hint.save(path)
        saved = {k: v for k, v in asdict(self.cfg).items() if k != "vlm"}
        atomic_write_json(Path(path) / ORACLE_CONFIG_FILE, saved)

    @classmethod
    def load(cls, path: str | Path, cfg: OracleConfig | None = None) -> OracleTeacher:
        """An oracle whose VLM is loaded from `path` (written by `save`). The prompt/answer fields it was
        trained with (`oracle_config.json`) win over `cfg`'s; a save without that file (older versions)
        takes `cfg`'s, and with `cfg` None the defaults. The hint channel is the saved one: an oracle
        saved before the channel existed (config without "hint", no `HINT_FILE`) loads **without** one
        and behaves as it was trained; a config saying hint=true without the file is an error."""
        base = asdict(cfg or OracleConfig())
        base.pop("vlm")
        saved = Path(path) / ORACLE_CONFIG_FILE
        if saved.exists():
            try:
                raw = json.loads(saved.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{saved}: not valid JSON ({e}); re-save the oracle with OracleTeacher.save"
                ) from e
            base |= {k: v for k, v in raw.items() if k in base}
            base["hint"] = bool(raw.get("hint", False))  # older oracles were trained without the channel
        else:
            base["hint"] = (Path(path) / HINT_FILE).exists()
        if base["hint"] and not (Path(path) / HINT_FILE).exists():
            raise FileNotFoundError(
                f"{saved} says hint=true but {Path(path) / HINT_FILE} is missing; re-save the oracle with "
                "OracleTeacher.save (it writes the hint channel beside the VLM)"
            )
        return cls(OracleConfig(vlm=VLMConfig(pretrained_dir=str(path)), **base))


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, A, V), (B, A) with -100 padding → (B,) mean CE per sample over its answer tokens."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none", ignore_index=IGNORE_INDEX)
    return ce.sum(1) / (target != IGNORE_INDEX).sum(1).clamp_min(1)


def select_min_ce(cands: list[Candidate]) -> tuple[Candidate, torch.Tensor]:
    """Per sample, the candidate with the lowest CE → (selected Candidate, choice (B,) long index into cands)."""
    ce = torch.stack([c.ce for c in cands], dim=1)  # (B, K)
    choice = ce.argmin(dim=1)
    idx = choice.view(1, -1, 1, 1)
    logits = torch.stack([c.logits for c in cands]).gather(0, idx.expand(1, *cands[0].logits.shape))[0]
    hidden = torch.stack([c.hidden for c in cands]).gather(0, idx.expand(1, *cands[0].hidden.shape))[0]
    return Candidate(logits, hidden, ce.gather(1, choice[:, None])[:, 0]), choice


@register("teacher", "oracle", OracleConfig)
def build(cfg: OracleConfig) -> OracleTeacher:
    return OracleTeacher(cfg)
