"""Batch-1 planning latency of every student: torch eager and ONNX Runtime, each in its own process.

    .venv/bin/python benchmarks/student_latency.py [--students ego_mlp transfuser] [--threads 2] [--iters 50]

Inputs are the default world's sensors (camera 128×256, BEV 128×128×3) unless --camera-shape/--bev-shape.
Torch and onnxruntime run in separate processes (their thread pools fight over a 2-core machine).
Prints p50 / p90 [ms] and parameter counts per student; timings on a shared host are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _build(name: str, bev_channels: int) -> object:
    from drivedistill import registry

    cfg = registry.get("student", name).default_config()
    if getattr(cfg, "bev_channels", None) == 0:
        cfg = dataclasses.replace(cfg, bev_channels=bev_channels)
    return registry.build("student", name, cfg).eval()


def worker(
    name: str, engine: str, shapes: dict[str, list[int]], threads: int, iters: int
) -> dict[str, object]:
    import torch

    from drivedistill.train.export import INPUT_NAMES, TensorPlanner, example_inputs, export_student

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = _build(name, shapes["bev"][2])
    params = sum(p.numel() for p in student.parameters())  # type: ignore[attr-defined]
    inputs = example_inputs(1, shapes)
    if engine == "torch":
        model = TensorPlanner(student).eval()  # type: ignore[arg-type]

        def run() -> None:
            with torch.inference_mode():
                model(*inputs)
    else:
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        export_student(student, path, "onnx", shapes)  # type: ignore[arg-type]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        feed = {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs) if n in wanted}

        def run() -> None:
            session.run(None, feed)

    for _ in range(10):
        run()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    return {"student": name, "engine": engine, "params": params, "p50_ms": float(np.percentile(times, 50)),
            "p90_ms": float(np.percentile(times, 90))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--students", nargs="*", default=["constant_velocity", "ego_mlp", "transfuser", "ipad"]
    )
    parser.add_argument("--engines", nargs="*", default=["torch", "onnx"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--camera-shape", type=int, nargs=3, default=[128, 256, 3])
    parser.add_argument("--bev-shape", type=int, nargs=3, default=[128, 128, 3])
    parser.add_argument("--worker", nargs=2, metavar=("STUDENT", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = {"camera": args.camera_shape, "bev": args.bev_shape}
    if args.worker:
        name, engine = args.worker
        print(json.dumps(worker(name, engine, shapes, args.threads, args.iters)))
        return
    print(f"{'student':<18} {'engine':<6} {'params':>10} {'p50 ms':>8} {'p90 ms':>8}")
    for name in args.students:
        for engine in args.engines:
            if engine == "onnx" and name == "constant_velocity":
                continue  # no parameters: nothing worth exporting
            cmd = [sys.executable, __file__, "--worker", name, engine, "--threads", str(args.threads),
                   "--iters", str(args.iters), "--camera-shape", *map(str, args.camera_shape),
                   "--bev-shape", *map(str, args.bev_shape)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name:<18} {engine:<6} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name:<18} {engine:<6} {r['params']:>10,} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f}")


if __name__ == "__main__":
    main()
