"""Latent action codes for a data set (the pipeline cache) and a trajectory probe of their content.

    codes = encode_latent_actions(model, dataset)            # {token: (12,) int64 ego codes}
    SceneDataset(store, "train", extras={EGO_CODES_KEY: codes})

The probe answers "do the codes carry the ego motion?": a small MLP reads the one-hot code sequence and
regresses the expert's future (x, y); its held-out ADE is compared with predicting the mean trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from drivedistill.data.dataset import SceneDataset
from drivedistill.models.latent_action.model import LatentActionModel

EGO_CODES_KEY = "latent/ego_codes"  # Batch.extras key of the (B, 12) long ego code sequences
ENV_CODES_KEY = "latent/env_codes"


@torch.no_grad()
def encode_latent_actions(
    model: LatentActionModel,
    dataset: SceneDataset,
    which: Literal["ego", "env"] = "ego",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Code sequence of every sample: token → (3 · tokens_per_step,) int64, in time order.

    The dataset must carry the privileged part (future frames and motion). The model must have trained
    its ego stage (it raises otherwise). Runs in eval mode; restores the previous mode.
    """
    if not dataset.with_privileged:
        raise ValueError(
            "encode_latent_actions: the dataset was built with with_privileged=False; the LAM needs future frames"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, np.ndarray] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
    for batch in loader:
        env, ego = model.latent_codes(batch.to(device))
        codes = (ego if which == "ego" else env).cpu().numpy().astype(np.int64)
        out.update(zip(batch.tokens, codes))
    model.train(was_training)
    return out


@dataclass
class ProbeResult:
    """Held-out ADE [m] over the 8 future (x, y) of a probe, and of the mean-trajectory baseline."""

    ade: float
    mean_baseline_ade: float


def probe_trajectory(
    codes_train: np.ndarray,
    traj_train: np.ndarray,
    codes_test: np.ndarray,
    traj_test: np.ndarray,
    num_codes: int,
    steps: int = 400,
    hidden: int = 128,
    seed: int = 0,
) -> ProbeResult:
    """Fit an MLP from one-hot code sequences (N, L) int in [0, num_codes) to futures (N, 8, 2+) [m].

    Returns the test ADE (mean L2 over the 8 steps, x and y only) and that of predicting the training
    mean trajectory ("chance"). Full-batch AdamW with weight decay; small on purpose.
    """
    gen = torch.Generator().manual_seed(seed)
    xtr = nn.functional.one_hot(torch.as_tensor(codes_train, dtype=torch.long), num_codes).flatten(1).float()
    xte = nn.functional.one_hot(torch.as_tensor(codes_test, dtype=torch.long), num_codes).flatten(1).float()
    ytr = torch.as_tensor(traj_train[..., :2], dtype=torch.float32).flatten(1)
    yte = torch.as_tensor(traj_test[..., :2], dtype=torch.float32)
    mean, std = ytr.mean(0), ytr.std(0).clamp_min(1e-3)
    net = nn.Sequential(nn.Linear(xtr.shape[1], hidden), nn.GELU(), nn.Linear(hidden, ytr.shape[1]))
    for p in net.parameters():
        nn.init.normal_(p, 0.0, 0.02, generator=gen) if p.ndim > 1 else nn.init.zeros_(p)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(steps):
        loss = (net(xtr) - (ytr - mean) / std).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (net(xte) * std + mean).unflatten(1, (-1, 2))
    ade = float((pred - yte).norm(dim=-1).mean())
    base = float((mean.unflatten(0, (-1, 2))[None] - yte).norm(dim=-1).mean())
    return ProbeResult(ade, base)


def position_majority_accuracy(codes_train: np.ndarray, codes_test: np.ndarray) -> float:
    """Accuracy on codes_test (N, L) of predicting, at each position, the most frequent training code there.

    The chance level of a code predictor: if the codes are nearly fixed per position, a high teacher
    token accuracy means nothing.
    """
    if codes_train.shape[1] != codes_test.shape[1]:
        raise ValueError(
            f"position_majority_accuracy: {codes_train.shape} vs {codes_test.shape} lengths differ"
        )
    majority = np.array([np.bincount(col).argmax() for col in np.asarray(codes_train).T])
    return float((np.asarray(codes_test) == majority[None]).mean())
