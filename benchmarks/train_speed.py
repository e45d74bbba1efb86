"""Training throughput (samples/s) of every student under imitation: forward + backward + AdamW step.

    .venv/bin/python benchmarks/train_speed.py [--students transfuser] [--batch-size 16] [--steps 10] [--threads 2]

Synthetic batches at the default world's sensor sizes (camera 128×256, BEV 128×128×3), one process,
no data loading (this measures the model, not the store). Timings on a shared host are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from drivedistill import registry
from drivedistill.data.dataset import collate
from drivedistill.methods.base import MethodContext
from drivedistill.testing import random_scene


def measure(name: str, batch_size: int, steps: int) -> tuple[int, float]:
    """(parameter count, samples/s) over `steps` timed steps after 2 warm-up steps."""
    cfg = registry.get("student", name).default_config()
    if getattr(cfg, "bev_channels", None) == 0:
        cfg = dataclasses.replace(cfg, bev_channels=3)
    student = registry.build("student", name, cfg)
    method = registry.build("method", student.default_method, student=student, context=MethodContext())
    scenes = [random_scene(i, camera_hw=(128, 256), bev_hw=(128, 128)) for i in range(batch_size)]
    batch = collate(scenes)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = method.losses(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(p.numel() for p in params), batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", nargs="*", default=["ego_mlp", "transfuser", "ipad"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{'student':<12} {'params':>10} {'samples/s':>10}   (batch {args.batch_size}, {args.threads} threads)"
    )
    for name in args.students:
        n, rate = measure(name, args.batch_size, args.steps)
        print(f"{name:<12} {n:>10,} {rate:>10.1f}")


if __name__ == "__main__":
    main()
