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


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere `platform.processor()`)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str = "auto") -> dict[str, object]:
    """Where a computation runs: CPU model, logical CPUs, torch intra-op threads, torch version, the
    device (`select_device(device)`) and the GPU's name when it is one. Recorded with every stage and
    results.json: figures from another CPU differ (float reduction order)."""
    import platform

    import torch

    dev = select_device(device)
    stamp: dict[str, object] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev,
    }
    if dev.startswith("cuda"):
        stamp["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return stamp
