"""`drivedistill train`: train a student with a method on a SceneStore.

drivedistill train --student transfuser [--method imitation] --data STORE --out RUN [--resume]
                   [--config FILE.yaml] [--train.epochs=5] [--student.hidden_dim=256] [--method.x=...]
torchrun --nproc_per_node=2 -m drivedistill.cli train ...     (DDP; rank 0 writes RUN)
"""

from __future__ import annotations

import argparse

from drivedistill.train.config import SECTIONS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="drivedistill train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", required=True, help="registered student (drivedistill list student)")
    parser.add_argument("--method", default="imitation", help="registered method (default: imitation)")
    parser.add_argument("--data", required=True, help="SceneStore directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, TensorBoard)")
    parser.add_argument(
        "--config", action="append", default=[], help="YAML with sections student/method/train"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not any(a.startswith(f"--{s}.") for s in SECTIONS)]
    if bad:
        parser.error(
            f"unrecognised arguments {bad}; overrides look like --train.epochs=5 or --student.hidden_dim=64"
        )

    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.train.config import resolve_run
    from drivedistill.train.distributed import shutdown
    from drivedistill.train.run import train_student

    spec = resolve_run(args.student, args.method, *args.config, overrides=rest)
    data = SceneDataset(SceneStore(args.data), args.split)
    try:
        result = train_student(spec, data, args.out, resume=args.resume)
    finally:
        shutdown()
    parts = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    print(
        f"trained {spec.student} with {spec.method}: step {result.step}, {parts}, {result.samples_per_s:.1f} samples/s"
    )
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0
