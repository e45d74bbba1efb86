"""Samples per second of `run_episode` (expert + simulation + camera + BEV rendering) on one core.

    OMP_NUM_THREADS=1 SDL_VIDEODRIVER=offscreen python benchmarks/collect_speed.py --episodes 5

Reports wall-clock and CPU (process) time; on a shared machine the CPU figure is the fairer one.
"""

from __future__ import annotations

import argparse
import time

from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import run_episode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = WorldConfig(num_episodes=args.episodes, seed=args.seed)
    run_episode(cfg, 0)  # warm the road-network cache of the first scenario
    samples = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(args.episodes):
        result = run_episode(cfg, i)
        samples += len(result.scenes)
        print(f"{result.episode}: {len(result.scenes)} samples, collided={result.collided}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        f"{samples} samples: {samples / wall:.1f} samples/s wall, {samples / cpu:.1f} samples/s CPU (one core)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
