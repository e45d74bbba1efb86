"""Two-stage VQ latent action model (LAPO-style, LatentVLA §2): environment latent, then ego latent.

Frames: the front camera at t = 0 and the privileged future frames at +1, +2, +3 s → 3 transitions of
1 s. Each transition is quantised into `tokens_per_step` codes, so a sample's latent action sequence has
3 × tokens_per_step tokens (default 3 × 4 = 12, the paper's length), in time order. The BEV is not used:
the world records it at t = 0 only, so it carries no dynamics.

Stage "env":  IDM_env(frames) → VQ_env (64 codes) → FDM_env(frame k, env action, GT motion + ego state)
              reconstructs frame k+1. The stage is conditioned on the GT trajectory through its decoder: told
              the ego motion, the decoder needs from the env codes only what it does not explain (other
              agents, the road ahead). The encoder does not see the GT motion, so it cannot copy it into the
              codes (it did: docs/LOG.md, issue #5).
Stage "ego":  env encoder and codebook frozen. IDM_ego(frames, env action [, GT motion if ego_sees_motion])
              → VQ_ego (16 codes) → FDM_ego(frame k, env action, ego action) reconstructs frame k+1 without
              the GT motion, and a linear head regresses the transition's GT ego motion from its ego action
              (`motion_weight`): the ego codes are the only path by which the ego motion reaches either.
              With `state_cond` (default) the FDM, the motion head and the trajectory decoder also read
              the current ego status (t = 0, AgentInput): the codes then carry the action (braking,
              steering, what changes from here), not the state the ego is in — the speed is known to
              every reader of the codes anyway (teacher prompt, student, decoder).

Reconstruction is a change-weighted MSE: pixel weight 1 + change_weight · |x_k+1 − x_k| / mean|x_k+1 − x_k|,
so the few pixels the motion changes are not drowned by the static sky and road (plain MSE ≈ copying the
current frame, docs/LOG.md). `recon` logs the plain MSE next to `copy_baseline`.

Training goes through the shared loop (`losses(batch)`); switch stages explicitly with `set_stage("ego")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from drivedistill.config import check
from drivedistill.models.latent_action.networks import ForwardDynamicsDecoder, InverseDynamicsEncoder
from drivedistill.models.latent_action.quantizer import VectorQuantizer, perplexity
from drivedistill.types import FUTURE_FRAME_STEPS, Batch

NUM_FRAMES = 1 + len(FUTURE_FRAME_STEPS)  # t = 0, +1, +2, +3 s
NUM_TRANSITIONS = NUM_FRAMES - 1
COND_DIM = (
    9  # per transition: (x, y, yaw) at +0.5 s and +1 s in the frame of its start, speed, accel, yaw rate
)
MOTION_DIM = 6  # the motion part of the conditioning: the two relative poses
# scales that bring the conditioning to O(1): metres/10, yaw·5 rad⁻¹, speed/10, accel/3, yaw rate·5
_COND_SCALE = (0.1, 0.1, 5.0, 0.1, 0.1, 5.0, 0.1, 1 / 3, 5.0)
# scale of the decoded future poses (x, y, yaw): the 4-s future spans up to ~120 m
_TRAJ_SCALE = (1 / 30, 1 / 10, 2.0)
STATE_DIM = 3  # the current ego status (AgentInput): speed [m/s], acceleration [m/s²], yaw rate [rad/s]
_STATE_SCALE = (0.1, 1 / 3, 5.0)


@dataclass
class LatentActionConfig:
    """Latent action model. Defaults sized for the 2-core default run (~0.4 M parameters)."""

    # frames are area-resized to (H, W) [px]; divisible by `patch`
    frame_hw: tuple[int, int] = field(default=(32, 64), metadata=check(ge=1))
    # patch side [px] → (32/8)·(64/8) = 32 patch tokens per frame
    patch: int = field(default=8, metadata=check(ge=1))
    dim: int = field(default=64, metadata=check(ge=1))  # transformer width
    heads: int = field(default=4, metadata=check(ge=1))
    encoder_layers: int = field(default=2, metadata=check(ge=1))
    decoder_layers: int = field(default=2, metadata=check(ge=1))
    # codes per 1-s transition; 3 transitions × 4 = 12 tokens (paper: 12)
    tokens_per_step: int = field(default=4, metadata=check(ge=1))
    code_dim: int = field(default=32, metadata=check(ge=1))  # dimension of a codebook vector
    env_codebook_size: int = field(default=64, metadata=check(ge=2))
    ego_codebook_size: int = field(default=16, metadata=check(ge=2))  # paper: 16 ego codes
    commitment: float = field(default=0.25, metadata=check(ge=0))  # β of the commitment loss (VQ-VAE default)
    # EMA codebook decay (0.99 collapsed to one code in 72 steps, docs/LOG.md)
    ema_decay: float = field(default=0.9, metadata=check(ge=0, lt=1))
    # restart a code whose usage share is < threshold / K (0.03 never fired)
    restart_threshold: float = field(default=0.5, metadata=check(ge=0))
    # recon pixel weight 1 + change_weight·|Δx|/mean|Δx| (0 = plain MSE)
    change_weight: float = field(default=4.0, metadata=check(ge=0))
    # ego stage: weight of regressing the GT ego motion from the ego action (0 = off)
    motion_weight: float = field(default=1.0, metadata=check(ge=0))
    # ego IDM also gets the GT motion token (trajectory-conditioned tokenizer); frames only: probe ≈ chance
    ego_sees_motion: bool = True
    # ego stage: weight of decoding the whole 4-s future (8 poses, t = 0 ego frame) from the 12 ego action
    # vectors (the LAM's detokenizer: `decode_trajectory`; 0 = off). Without it the only read-out was the
    # per-transition motion head, whose composed poses drift (docs/LOG.md, issue #16).
    traj_weight: float = field(default=1.0, metadata=check(ge=0))
    traj_hidden: int = field(default=256, metadata=check(ge=1))  # width of the trajectory decoder MLP
    # ego stage: the FDM, the motion head and the detokenizer also read the current ego status (t = 0,
    # AgentInput: speed, acceleration, yaw rate), so the ego codes carry the action — what the ego does
    # from here — and not the state it is in. Off: the codes must also carry the speed, which the
    # teacher's prompt and the image-free baseline already hold (docs/LOG.md, issue #16, h4)
    state_cond: bool = True
    # after the ego stage: refit the detokenizer alone on the frozen codes of the whole corpus
    # (`fit_detokenizer`; 0 = off). Trained jointly for the stage's few hundred steps it stays far from
    # its floor (val ADE of the LAM's own codes 2.26 m → 1.44 m after 1,500 refit steps, docs/LOG.md)
    detok_steps: int = field(default=1500, metadata=check(ge=0))
    # during that refit each code is replaced by a random one with this probability, so the decoder of a
    # predicted (partly wrong) code sequence falls back on the status instead of trusting every code
    # (the teacher's greedy codes: 4.87 m decoded at 0, 2.93 m at 0.5)
    detok_code_noise: float = field(default=0.5, metadata=check(ge=0, lt=1))

    def __post_init__(self) -> None:
        if self.frame_hw[0] % self.patch or self.frame_hw[1] % self.patch:
            raise ValueError(
                f"LatentActionConfig.frame_hw={self.frame_hw}: both sides must be divisible by patch={self.patch}"
            )
        if self.dim % self.heads:
            raise ValueError(f"LatentActionConfig.dim={self.dim} must be divisible by heads={self.heads}")
        if self.ego_codebook_size < 2 or self.env_codebook_size < 2:
            raise ValueError("LatentActionConfig: codebook sizes must be ≥ 2")
        if self.change_weight < 0 or self.motion_weight < 0 or self.traj_weight < 0:
            raise ValueError(
                f"LatentActionConfig: change_weight={self.change_weight}, motion_weight={self.motion_weight} "
                f"and traj_weight={self.traj_weight} must be ≥ 0"
            )

    @property
    def sequence_length(self) -> int:
        """Latent action tokens per sample (per latent: env or ego)."""
        return NUM_TRANSITIONS * self.tokens_per_step


@dataclass
class LatentActions:
    """Codes (B, 3, K) long and straight-through vectors (B, 3, K, C) of both latents (ego None in stage env)."""

    env_codes: torch.Tensor
    env_z: torch.Tensor
    ego_codes: torch.Tensor | None
    ego_z: torch.Tensor | None


def frame_sequence(batch: Batch, frame_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 4, 3, h, w) camera at t = 0, +1, +2, +3 s, area-resized to frame_hw, in [0, 1]."""
    priv = batch.require_privileged("latent action model (future frames)")
    frames = torch.cat([batch.inputs.camera[:, None], priv.future_frames], 1)
    b, f = frames.shape[:2]
    return F.interpolate(frames.flatten(0, 1), size=frame_hw, mode="area").unflatten(0, (b, f))


def _se2_relative(ref: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """pose (..., 3) expressed in the frame of ref (..., 3); both (x, y, yaw) in one frame [m, m, rad]."""
    dx, dy = pose[..., 0] - ref[..., 0], pose[..., 1] - ref[..., 1]
    c, s = torch.cos(ref[..., 2]), torch.sin(ref[..., 2])
    dyaw = torch.atan2(torch.sin(pose[..., 2] - ref[..., 2]), torch.cos(pose[..., 2] - ref[..., 2]))
    return torch.stack([c * dx + s * dy, -s * dx + c * dy, dyaw], -1)


def motion_condition(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition GT ego motion + ego state (B, 3, COND_DIM) and validity (B, 3) bool.

    Transition k spans grid steps 2k → 2k+2 (0.5 s steps): poses at 2k+1, 2k+2 relative to the pose at 2k,
    and the ego status at 2k (the current status for k = 0, else the privileged future status).
    """
    priv = batch.require_privileged("latent action model (GT motion)")
    traj = torch.cat([torch.zeros_like(priv.trajectory[:, :1]), priv.trajectory], 1)  # (B, 9, 3), step s
    status = torch.cat([batch.inputs.ego_status[:, None], priv.future_ego_status], 1)  # (B, 9, 3)
    starts = [2 * k for k in range(NUM_TRANSITIONS)]
    rel1 = torch.stack([_se2_relative(traj[:, s], traj[:, s + 1]) for s in starts], 1)
    rel2 = torch.stack([_se2_relative(traj[:, s], traj[:, s + 2]) for s in starts], 1)
    cond = torch.cat([rel1, rel2, status[:, starts]], -1) * rel1.new_tensor(_COND_SCALE)
    valid = priv.valid[:, [s + 1 for s in starts]]  # the future index of step 2k+2
    return cond, valid


def _masked_mse(
    pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor, pixel_w: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared error of (B·3, 3, h, w) frames, averaged over pixels (weighted by pixel_w (B·3, 1, h, w)
    if given) and over transitions weighted by w (B, 3)."""
    sq = (pred - target).pow(2).mean(1, keepdim=True)
    err = sq.mean((1, 2, 3)) if pixel_w is None else (sq * pixel_w).sum((1, 2, 3)) / pixel_w.sum((1, 2, 3))
    return (err.reshape(w.shape) * w).sum() / w.sum().clamp_min(1.0)


def change_weights(current: torch.Tensor, target: torch.Tensor, gain: float) -> torch.Tensor:
    """Pixel weights (N, 1, h, w) = 1 + gain · d / mean(d), d = |target − current| averaged over RGB."""
    d = (target - current).abs().mean(1, keepdim=True)
    return 1.0 + gain * d / d.mean((2, 3), keepdim=True).clamp_min(1e-6)


def _encoder(cfg: LatentActionConfig, extra_tokens: int) -> InverseDynamicsEncoder:
    return InverseDynamicsEncoder(
        cfg.frame_hw, cfg.patch, cfg.dim, cfg.heads, cfg.encoder_layers, NUM_FRAMES,
        cfg.tokens_per_step, extra_tokens, cfg.code_dim,
    )  # fmt: skip


class LatentActionModel(nn.Module):
    """The two-stage LAM. `stage` is a buffer (0 = env, 1 = ego) so checkpoints remember it."""

    stage_index: torch.Tensor

    def __init__(self, cfg: LatentActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, c, d = cfg.tokens_per_step, cfg.code_dim, cfg.dim
        self.env_encoder = _encoder(cfg, extra_tokens=0)  # frames only: the GT motion goes to the decoder
        self.env_vq = VectorQuantizer(cfg.env_codebook_size, c, cfg.ema_decay, cfg.restart_threshold)
        self.env_decoder = ForwardDynamicsDecoder(
            cfg.frame_hw, cfg.patch, d, cfg.heads, cfg.decoder_layers, k + 1
        )
        self.env_action_in = nn.Linear(c, d)
        self.env_cond_in = nn.Linear(COND_DIM, d)
        self.ego_encoder = _encoder(cfg, extra_tokens=k + int(cfg.ego_sees_motion))
        self.ego_enc_env_in = nn.Linear(c, d)
        self.ego_enc_motion_in = nn.Linear(COND_DIM, d) if cfg.ego_sees_motion else None
        self.ego_vq = VectorQuantizer(cfg.ego_codebook_size, c, cfg.ema_decay, cfg.restart_threshold)
        s = STATE_DIM if cfg.state_cond else 0
        self.ego_decoder = ForwardDynamicsDecoder(
            cfg.frame_hw, cfg.patch, d, cfg.heads, cfg.decoder_layers, 2 * k + int(cfg.state_cond)
        )
        self.ego_env_in = nn.Linear(c, d)
        self.ego_action_in = nn.Linear(c, d)
        self.ego_state_in = nn.Linear(STATE_DIM, d) if cfg.state_cond else None
        # linear read-out of a transition's GT ego motion from its k ego action vectors (+ the status)
        self.ego_motion_head = nn.Linear(k * c + s, MOTION_DIM) if cfg.motion_weight > 0 else None
        # detokenizer: the 12 ego action vectors (+ the current status) → the 8 future poses (x, y, yaw)
        # in the t = 0 ego frame
        self.traj_decoder = (
            nn.Sequential(
                nn.Linear(cfg.sequence_length * c + s, cfg.traj_hidden),
                nn.GELU(),
                nn.Linear(cfg.traj_hidden, cfg.traj_hidden),
                nn.GELU(),
                nn.Linear(cfg.traj_hidden, 8 * 3),
            )
            if cfg.traj_weight > 0
            else None
        )
        self.register_buffer("stage_index", torch.zeros((), dtype=torch.long))

    # ----- stages ------------------------------------------------------------------------------------
    @property
    def stage(self) -> Literal["env", "ego"]:
        return "ego" if int(self.stage_index) == 1 else "env"

    def _env_modules(self) -> list[nn.Module]:
        return [self.env_encoder, self.env_vq, self.env_decoder, self.env_action_in, self.env_cond_in]

    def set_stage(self, stage: Literal["env", "ego"]) -> None:
        """Select the stage to train. "ego" freezes the environment encoder, codebook and decoder for good."""
        if stage not in ("env", "ego"):
            raise ValueError(f"LatentActionModel.set_stage: stage must be 'env' or 'ego', got {stage!r}")
        if stage == "env" and self.stage == "ego":
            raise ValueError(
                "LatentActionModel.set_stage('env'): the env codebook is frozen once stage 'ego' began"
            )
        self.stage_index.fill_(1 if stage == "ego" else 0)
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        frozen = self.stage == "ego"
        self.env_vq.frozen = frozen
        for m in self._env_modules():
            m.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> LatentActionModel:
        super().train(mode)
        if self.stage == "ego":
            for m in self._env_modules():
                m.eval()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[no-untyped-def,override]
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._apply_freeze()
        return out

    # ----- encoding ----------------------------------------------------------------------------------
    def _ego_conditioning(self, env_z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Ego IDM conditioning tokens (B, 3, E, D): the env action (B, 3, K, C) [+ the GT motion token]."""
        tokens = self.ego_enc_env_in(env_z)
        if self.ego_enc_motion_in is not None:
            tokens = torch.cat([tokens, self.ego_enc_motion_in(cond)[:, :, None]], 2)
        return tokens

    def encode(self, frames: torch.Tensor, cond: torch.Tensor, with_ego: bool) -> LatentActions:
        """frames (B, 4, 3, h, w), cond (B, 3, COND_DIM) → codes of both latents (ego only if with_ego)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == "env"):
            env = self.env_vq(self.env_encoder(frames))
        if not with_ego:
            return LatentActions(env.codes, env.z_q, None, None)
        env_z = env.z_q.detach()
        ego = self.ego_vq(self.ego_encoder(frames, self._ego_conditioning(env_z, cond)))
        return LatentActions(env.codes, env_z, ego.codes, ego.z_q)

    @torch.no_grad()
    def latent_codes(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(env, ego) code sequences (B, L) long, L = 3 · tokens_per_step, in time order. Needs stage ego."""
        if self.stage != "ego":
            raise RuntimeError(
                "LatentActionModel.latent_codes: the ego latent is not trained; call set_stage('ego') and train it first"
            )
        frames = frame_sequence(batch, self.cfg.frame_hw)
        cond, _ = motion_condition(batch)
        acts = self.encode(frames, cond, with_ego=True)
        assert acts.ego_codes is not None
        return acts.env_codes.flatten(1), acts.ego_codes.flatten(1)

    # ----- decoding ----------------------------------------------------------------------------------
    def _state(self, ego_status: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Scaled current ego status (B, 3), or (B, 0) when `state_cond` is off."""
        if not self.cfg.state_cond:
            return like.new_zeros(like.shape[0], 0)
        if ego_status is None:
            raise ValueError(
                "LatentActionModel: this LAM reads the current ego status (lam.state_cond=true); pass "
                "ego_status (B, 3) = AgentInputBatch.ego_status (speed, acceleration, yaw rate)"
            )
        if ego_status.shape != (like.shape[0], STATE_DIM):
            raise ValueError(
                f"LatentActionModel: ego_status must be ({like.shape[0]}, {STATE_DIM}), got {tuple(ego_status.shape)}"
            )
        return ego_status.to(like) * like.new_tensor(_STATE_SCALE)

    def _decode_z(self, ego_z: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Ego action vectors (B, 3, K, C) + scaled status (B, S) → future poses (B, 8, 3) [m, m, rad],
        t = 0 ego frame."""
        assert self.traj_decoder is not None
        out = self.traj_decoder(torch.cat([ego_z.flatten(1), state], 1)).view(-1, 8, 3)
        return out / out.new_tensor(_TRAJ_SCALE)

    def fit_detokenizer(
        self,
        codes: torch.Tensor,
        futures: torch.Tensor,
        valid: torch.Tensor,
        ego_status: torch.Tensor | None = None,
        steps: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> float:
        """Refit the trajectory decoder alone (re-initialised) on frozen ego codes (N, L) long, their
        futures (N, 8, 3) [m, m, rad] (t = 0 ego frame), valid (N, 8) bool [and the current ego status
        (N, 3) with `state_cond`]: AdamW, `steps` (default `cfg.detok_steps`) minibatches, each code
        replaced by a uniformly random one with probability `cfg.detok_code_noise`. Deterministic given
        `seed`; the codebook and every other weight are untouched. Returns the last minibatch loss."""
        if self.traj_decoder is None or self.stage != "ego":
            raise RuntimeError(
                "LatentActionModel.fit_detokenizer: needs traj_weight > 0 and a trained ego stage"
            )
        steps = self.cfg.detok_steps if steps is None else steps
        n, k = codes.shape[0], self.cfg.ego_codebook_size
        if futures.shape[0] != n or valid.shape[0] != n:
            raise ValueError(
                f"fit_detokenizer: codes {tuple(codes.shape)}, futures {tuple(futures.shape)} and valid "
                f"{tuple(valid.shape)} must have the same length"
            )
        gen = torch.Generator().manual_seed(seed)
        dev = next(self.parameters()).device
        for layer in self.traj_decoder:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=gen)
                bound = 1 / layer.in_features**0.5
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        opt = torch.optim.AdamW(self.traj_decoder.parameters(), lr=lr)
        scale = torch.tensor(_TRAJ_SCALE, device=dev)
        was = self.training
        self.traj_decoder.train()
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            c = codes[idx].long().clone()
            noise = torch.rand(c.shape, generator=gen) < self.cfg.detok_code_noise
            c[noise] = torch.randint(0, k, (int(noise.sum()),), generator=gen)
            c, fut, w = c.to(dev), futures[idx].to(dev).float(), valid[idx].to(dev).float()
            with torch.no_grad():
                z = self.ego_vq.embed(c.view(-1, NUM_TRANSITIONS, self.cfg.tokens_per_step))
                st = self._state(None if ego_status is None else ego_status[idx].to(dev), z)
            err = ((self._decode_z(z, st) - fut) * scale).pow(2).mean(-1)
            loss = (err * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.train(was)
        return float(loss.detach())

    @torch.no_grad()
    def decode_trajectory(
        self, ego_codes: torch.Tensor, ego_status: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Ego code sequences (B, L) long [+ the current ego status (B, 3): speed [m/s], acceleration
        [m/s²], yaw rate [rad/s], AgentInput, needed when `state_cond`] → decoded 4-s futures (B, 8, 3)
        (x, y [m], yaw [rad]) in the ego frame at t = 0, 0.5 s apart. Needs `traj_weight > 0` and a
        trained ego stage."""
        if self.traj_decoder is None:
            raise RuntimeError(
                "LatentActionModel.decode_trajectory: this LAM has no trajectory decoder (lam.traj_weight=0)"
            )
        k = self.cfg.tokens_per_step
        z = self.ego_vq.embed(ego_codes.long().view(-1, NUM_TRANSITIONS, k))
        return self._decode_z(z, self._state(ego_status, z))

    # ----- training ----------------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Change-weighted reconstruction of the next frame (valid transitions) + β · commitment of the
        trained stage (+ motion_weight · GT-ego-motion regression from the ego action, stage ego).

        Also returns detached diagnostics: plain `recon` MSE vs `copy_baseline`, perplexity and usage of
        the trained codebook in this batch, restarted codes. In training mode the trained codebook takes
        one EMA step.
        """
        frames = frame_sequence(batch, self.cfg.frame_hw)
        cond, valid = motion_condition(batch)
        w = valid.to(frames.dtype)
        extra: dict[str, torch.Tensor] = {}
        if self.stage == "ego":
            with torch.no_grad():
                env_z = self.env_vq.embed(self.env_vq.assign(self.env_encoder(frames)))
            z_e = self.ego_encoder(frames, self._ego_conditioning(env_z, cond))
            vq, quantizer = self.ego_vq(z_e), self.ego_vq
            state = self._state(batch.inputs.ego_status, frames)  # (B, S): the t = 0 status, S = 0 if off
            actions = torch.cat([self.ego_env_in(env_z), self.ego_action_in(vq.z_q)], 2)
            if self.ego_state_in is not None:  # the same current-status token for every transition
                st_tok = self.ego_state_in(state)[:, None, None].expand(-1, NUM_TRANSITIONS, 1, -1)
                actions = torch.cat([actions, st_tok], 2)
            decoder = self.ego_decoder
            if self.ego_motion_head is not None:
                per_step = state[:, None].expand(-1, NUM_TRANSITIONS, -1)
                head_in = torch.cat([vq.z_q.flatten(2), per_step], -1)
                err = (self.ego_motion_head(head_in) - cond[..., :MOTION_DIM]).pow(2).mean(-1)
                extra["motion"] = (err * w).sum() / w.sum().clamp_min(1.0)
            if self.traj_decoder is not None:
                priv = batch.require_privileged("latent action model (trajectory decoder)")
                scale = frames.new_tensor(_TRAJ_SCALE)
                terr = ((self._decode_z(vq.z_q, state) - priv.trajectory) * scale).pow(2).mean(-1)  # (B, 8)
                fw = priv.valid.to(frames.dtype)
                extra["traj"] = (terr * fw).sum() / fw.sum().clamp_min(1.0)
        else:
            z_e = self.env_encoder(frames)
            vq, quantizer = self.env_vq(z_e), self.env_vq
            actions = torch.cat([self.env_action_in(vq.z_q), self.env_cond_in(cond)[:, :, None]], 2)
            decoder = self.env_decoder
        current = frames[:, :-1].flatten(0, 1)
        target = frames[:, 1:].flatten(0, 1)
        pred = decoder(current, actions.flatten(0, 1))
        pixel_w = change_weights(current, target, self.cfg.change_weight)
        recon_w = _masked_mse(pred, target, w, pixel_w)
        loss = recon_w + self.cfg.commitment * vq.commitment
        if "motion" in extra:
            loss = loss + self.cfg.motion_weight * extra["motion"]
        if "traj" in extra:
            loss = loss + self.cfg.traj_weight * extra["traj"]
        restarted = torch.zeros((), dtype=torch.long)
        if self.training:
            restarted = quantizer.update(z_e, vq.codes)
        codes = vq.codes.detach()
        used = torch.bincount(codes.reshape(-1), minlength=quantizer.num_codes) > 0
        return {
            "loss": loss,
            **{k: v.detach() for k, v in extra.items()},
            "recon_weighted": recon_w.detach(),
            "recon": _masked_mse(pred.detach(), target, w),
            "commit": vq.commitment.detach(),
            "perplexity": perplexity(codes, quantizer.num_codes),
            "usage": used.float().mean(),
            "restarted": restarted.float(),
            "copy_baseline": _masked_mse(current, target, w).detach(),  # MSE of predicting "no change"
            "copy_weighted": _masked_mse(current, target, w, pixel_w).detach(),  # same, change-weighted
        }
