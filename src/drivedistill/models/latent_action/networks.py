"""Networks of the latent action model: the inverse-dynamics encoder (IDM) and forward-dynamics decoder (FDM).

Frames are low-resolution RGB images cut into square patches. The IDM is one transformer over the patch
tokens of all frames plus, per transition k (frame k → frame k+1), `tokens_per_step` learned query tokens
and conditioning tokens; a block-causal mask lets a token at time τ attend only to tokens at times ≤ τ
(frame f has time f; transition k's tokens have time k+1, i.e. they see frames 0 … k+1 and nothing later).
The FDM reconstructs frame k+1 from the patches of frame k plus a few action tokens (residual on frame k).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _transformer(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class PatchEmbed(nn.Module):
    """(N, 3, H, W) frames in [0, 1] → (N, P, D) patch tokens with a learned spatial position embedding."""

    def __init__(self, frame_hw: tuple[int, int], patch: int, dim: int) -> None:
        super().__init__()
        h, w = frame_hw
        if h % patch or w % patch:
            raise ValueError(f"LatentActionConfig.frame_hw {frame_hw} must be divisible by patch={patch}")
        self.num_patches = (h // patch) * (w // patch)
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(self.num_patches, dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(frames).flatten(2).transpose(1, 2) + self.pos


class InverseDynamicsEncoder(nn.Module):
    """Block-causal spatio-temporal transformer: frames (B, F, 3, H, W) → continuous actions (B, F-1, K, C).

    extra (B, F-1, E, D): conditioning tokens per transition, already embedded at width D (the frozen
    environment action for the ego latent, optionally the GT ego motion), placed at the transition's time
    step. E may be 0 (the environment latent sees frames only).
    """

    def __init__(
        self,
        frame_hw: tuple[int, int],
        patch: int,
        dim: int,
        heads: int,
        layers: int,
        num_frames: int,
        tokens_per_step: int,
        extra_tokens: int,
        code_dim: int,
    ) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.tokens_per_step = tokens_per_step
        self.extra_tokens = extra_tokens
        self.patch = PatchEmbed(frame_hw, patch, dim)
        self.time = nn.Parameter(0.02 * torch.randn(num_frames, dim))
        self.queries = nn.Parameter(0.02 * torch.randn(tokens_per_step, dim))
        self.extra_slot = nn.Parameter(0.02 * torch.randn(extra_tokens, dim))
        self.blocks = _transformer(dim, heads, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, code_dim)
        p, k, e, f = self.patch.num_patches, tokens_per_step, extra_tokens, num_frames
        times = torch.cat(
            [
                torch.arange(f).repeat_interleave(p),  # patches of frame f: time f
                torch.arange(1, f).repeat_interleave(k),  # queries of transition t: time t+1
                torch.arange(1, f).repeat_interleave(e),  # conditioning of transition t: time t+1
            ]
        )
        # True = may not attend (keys later than the query's time)
        self.register_buffer("mask", times[None, :] > times[:, None], persistent=False)

    def forward(self, frames: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        b, f = frames.shape[:2]
        if f != self.num_frames:
            raise ValueError(f"InverseDynamicsEncoder: expected {self.num_frames} frames, got {f}")
        if extra is None:
            extra = frames.new_zeros(b, f - 1, 0, self.extra_slot.shape[1])
        if extra.shape[1:] != (f - 1, self.extra_tokens, self.extra_slot.shape[1]):
            raise ValueError(
                f"InverseDynamicsEncoder: extra must be (B, {f - 1}, {self.extra_tokens}, "
                f"{self.extra_slot.shape[1]}), got {tuple(extra.shape)}"
            )
        patches = self.patch(frames.flatten(0, 1)).unflatten(0, (b, f)) + self.time[None, :, None]
        queries = (self.queries[None, None] + self.time[None, 1:, None]).expand(b, -1, -1, -1)
        cond = extra + self.extra_slot[None, None] + self.time[None, 1:, None]
        n_patch, n_query = patches.shape[1] * patches.shape[2], queries.shape[1] * queries.shape[2]
        tokens = torch.cat([patches.flatten(1, 2), queries.flatten(1, 2), cond.flatten(1, 2)], 1)
        out = self.norm(self.blocks(tokens, mask=self.mask))
        q_out = out[:, n_patch : n_patch + n_query].unflatten(1, (f - 1, self.tokens_per_step))
        return self.head(q_out)


class ForwardDynamicsDecoder(nn.Module):
    """Reconstruct the next frame: current frame (N, 3, H, W) + action tokens (N, A, D) → (N, 3, H, W).

    Predicts a residual on the current frame, so an uninformative action still yields a copy.
    """

    def __init__(
        self, frame_hw: tuple[int, int], patch: int, dim: int, heads: int, layers: int, num_actions: int
    ) -> None:
        super().__init__()
        self.frame_hw = frame_hw
        self.patch_size = patch
        self.patch = PatchEmbed(frame_hw, patch, dim)
        self.action_slot = nn.Parameter(0.02 * torch.randn(num_actions, dim))
        self.blocks = _transformer(dim, heads, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3 * patch * patch)

    def forward(self, frame: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.patch(frame), actions + self.action_slot[None]], 1)
        out = self.norm(self.blocks(tokens))[:, : self.patch.num_patches]
        delta = F.fold(self.head(out).transpose(1, 2), self.frame_hw, self.patch_size, stride=self.patch_size)
        return frame + delta
