"""Device selection and seeding. Code is device-agnostic: CUDA when present, CPU otherwise."""

from __future__ import annotations

import os
import random

import numpy as np


def select_device(requested: str = "auto") -> str:
    """`auto` → "cuda" if available else "cpu"; an explicit request for a missing CUDA is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{requested}' requested but CUDA is not available; use --device=cpu or auto"
        )
    return requested


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; on CPU also ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
