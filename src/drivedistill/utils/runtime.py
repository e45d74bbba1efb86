"""Device selection and seeding. Code is device-agnostic: CUDA when present, CPU otherwise."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

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


def hardware(device: str = "auto") -> dict[str, Any]:
    """What the figures were measured on (read-only): CPU model, logical CPUs, torch's intra-op threads,
    torch's CPU kernel capability (its float rounding can differ between capabilities), torch version,
    the resolved device (and the CUDA device name on a GPU), OS and Python."""
    import platform

    import torch

    resolved = select_device(device)
    out: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "device": resolved,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if resolved.startswith("cuda"):
        out["cuda_device"] = torch.cuda.get_device_name(torch.device(resolved))
    return out


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13"): /proc/cpuinfo on Linux, else `platform.processor()`."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
