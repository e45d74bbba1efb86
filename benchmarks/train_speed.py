"""Training throughput (samples/s) of every student under imitation: forward + backward + AdamW step.

    .venv/bin/python benchmarks/train_speed.py [--students transfuser] [--batch-size 16] [--steps 10] [--threads 2]
        [--precision fp32 bf16] [--compile]

Synthetic batches at the default world's sensor sizes (camera 128×256, BEV 128×128×3), one process,
no data loading (this measures the model, not the store). Timings on a shared host are noisy.
`--precision` runs each listed mode (the training loop's autocast: bf16 autocast of the forward pass,
fp32 weights/optimiser) on the same model and batch; `--compile` also times each mode under
`torch.compile` (compilation happens in the untimed warm-up steps).
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
from drivedistill.train.loop import autocast_dtype
from drivedistill.utils.runtime import select_device


def measure(
    name: str, batch_size: int, steps: int, precision: str = "fp32", compile: bool = False
) -> tuple[int, float]:
    """(parameter count, samples/s) over `steps` timed steps after 2 warm-up steps."""
    device = select_device("auto")
    amp = autocast_dtype(precision, device)
    torch.manual_seed(0)
    cfg = registry.get("student", name).default_config()
    if getattr(cfg, "bev_channels", None) == 0:
        cfg = dataclasses.replace(cfg, bev_channels=3)
    student = registry.build("student", name, cfg)
    method = registry.build("method", student.default_method, student=student, context=MethodContext())
    scenes = [random_scene(i, camera_hw=(128, 256), bev_hw=(128, 128)) for i in range(batch_size)]
    method.to(device)
    batch = collate(scenes).to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = torch.compile(method.losses) if compile else method.losses
    for i in range(steps + 2):
        if i == 2:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            loss = losses(batch)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} {precision}: non-finite loss {float(loss)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return sum(p.numel() for p in params), batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", nargs="*", default=["ego_mlp", "transfuser", "ipad"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="*", default=["fp32"], choices=["fp32", "bf16", "fp16", "auto"])
    parser.add_argument("--compile", action="store_true", help="also time each mode under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{'student':<12} {'mode':<14} {'params':>10} {'samples/s':>10}   "
        f"(batch {args.batch_size}, {args.threads} threads, {select_device('auto')})"
    )
    for name in args.students:
        for precision in args.precision:
            for compiled in (False, True) if args.compile else (False,):
                n, rate = measure(name, args.batch_size, args.steps, precision, compiled)
                mode = precision + (" compiled" if compiled else "")
                print(f"{name:<12} {mode:<14} {n:>10,} {rate:>10.3g}", flush=True)


if __name__ == "__main__":
    main()
