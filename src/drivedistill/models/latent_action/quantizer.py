"""EMA vector quantiser with straight-through gradients, commitment loss and dead-code restarts.

Choice (logged in docs/LOG.md): the codebook is learnt by exponential moving averages of the encoder
outputs assigned to each code (VQ-VAE-2 style), not by a codebook loss. EMA codebooks are more stable at
small batch sizes, and restarting dead codes from live encoder outputs keeps all codes in use, which
matters for a 16-code ego codebook where every unused code is 1/16 of the vocabulary.

The forward pass is pure (no state change); `update(z, codes)` is the explicit training step of the
codebook, called by the owner's `losses()` in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class QuantizerOutput:
    """z_q (..., C) straight-through quantised vectors; codes (...) long; commitment scalar loss."""

    z_q: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor


def perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the empirical code distribution of `codes` (any shape); in [1, num_codes]."""
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).to(torch.float32)
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (..., C) vectors onto `num_codes` codes of dimension C.

    Buffers: codebook (K, C); ema_count (K,) smoothed assignment counts; ema_sum (K, C) smoothed sums
    of assigned vectors; initialised (bool) whether the codebook was seeded from data.
    """

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    initialised: torch.Tensor

    def __init__(
        self, num_codes: int, dim: int, decay: float = 0.99, restart_threshold: float = 0.03
    ) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"VectorQuantizer.num_codes: need at least 2 codes, got {num_codes}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"VectorQuantizer.decay: must be in (0, 1), got {decay}")
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        # a code is dead when its smoothed share of assignments is below restart_threshold × (1/K)
        self.restart_threshold = restart_threshold
        self.frozen = False
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Index (...) of the nearest code (squared Euclidean distance) for each (..., C) vector."""
        flat = z.reshape(-1, self.dim)
        dist = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None]
        )
        return dist.argmin(1).reshape(z.shape[:-1])

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(...) long → (...) + (C,) code vectors (no gradient to the codebook; it is EMA-learnt)."""
        return F.embedding(codes, self.codebook)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise z (..., C). Gradients pass straight through to z; commitment = ||z − sg(z_q)||²."""
        codes = self.assign(z.detach())
        z_q = self.embed(codes)
        commitment = F.mse_loss(z, z_q.detach())
        z_st = z + (z_q - z).detach()
        return QuantizerOutput(z_st, codes, commitment)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """One EMA step of the codebook from encoder outputs z (..., C) and their codes (...).

        Seeds the codebook from data on the first call and restarts dead codes from random rows of z.
        Returns the number of restarted codes (0-d long tensor). No-op when `frozen`.
        """
        if self.frozen:
            return torch.zeros((), dtype=torch.long, device=z.device)
        flat = z.detach().reshape(-1, self.dim).float()
        if not bool(self.initialised):
            idx = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
            self.codebook.copy_(flat[idx] + 1e-3 * torch.randn_like(flat[idx]))
            self.ema_sum.copy_(self.codebook)
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
            codes = self.assign(z)
        onehot = F.one_hot(codes.reshape(-1), self.num_codes).to(flat.dtype)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        return self.restart_dead(flat)

    @torch.no_grad()
    def restart_dead(self, flat: torch.Tensor) -> torch.Tensor:
        """Re-seed codes whose usage share fell below the threshold with random rows of flat (N, C)."""
        share = self.ema_count / self.ema_count.sum().clamp_min(1e-12)
        dead = share < self.restart_threshold / self.num_codes
        num_dead = dead.sum()
        if bool(num_dead > 0):
            idx = torch.randint(0, flat.shape[0], (int(num_dead),), device=flat.device)
            fresh = flat[idx] + 1e-3 * torch.randn_like(flat[idx])
            mean_count = self.ema_count.mean()
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh * mean_count
            self.ema_count[dead] = mean_count
        return num_dead
