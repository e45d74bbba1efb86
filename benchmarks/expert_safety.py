"""Expert safety of the default world: collision-free rate per scenario and per scripted event, and how
often the expert's plan departs from constant velocity per sample label (perception must matter).

    OMP_NUM_THREADS=1 SDL_VIDEODRIVER=offscreen python benchmarks/expert_safety.py --episodes 100 [--workers 2]

Episode i of the default `WorldConfig` (seed `--seed`) is scenario `scenarios[i % 5]`; an episode counts
as collided when the simulator flags the ego as crashed. "departs" = the expert's 4 s future (8 poses,
ego frame) is > 2 m away from constant-velocity extrapolation of the current speed at some step.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import time
from collections import defaultdict
from typing import Any

import numpy as np

from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import run_episode

DEPART_M = 2.0  # [m]


def _run(seed: int, index: int) -> dict[str, Any]:
    """One episode's outcome and, per sample, (label, departs from constant velocity)."""
    result = run_episode(WorldConfig(seed=seed), index)
    labels = []
    for sc in result.scenes:
        assert sc.privileged is not None
        fut = sc.privileged.future_trajectory[:, :2]
        t = 0.5 * np.arange(1, len(fut) + 1)
        cv = np.stack([sc.agent_input.ego_status[0] * t, np.zeros_like(t)], 1)
        labels.append((str(sc.meta["event"]), bool(np.hypot(*(fut - cv).T).max() > DEPART_M)))
    return {
        "index": index,
        "episode": result.episode,
        "scenario": result.scenario,
        "event": result.stats["event"],
        "collided": bool(result.collided),
        "offroad": bool(result.offroad),
        "labels": labels,
    }


def _rate(rows: list[dict[str, Any]]) -> str:
    ok = sum(not r["collided"] for r in rows)
    return f"{ok}/{len(rows)} = {ok / max(len(rows), 1):.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first episode index")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    indices = list(range(args.start, args.start + args.episodes))
    wall0 = time.perf_counter()
    if args.workers == 1:
        rows = [_run(args.seed, i) for i in indices]
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            rows = list(pool.map(_run, [args.seed] * len(indices), indices))
    by_scenario: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_scenario[r["scenario"]].append(r)
        by_event[r["event"]].append(r)
        if r["collided"]:
            print(f"collided: {r['episode']} (event {r['event']})")
    print(f"collision-free, seed {args.seed}, episodes {indices[0]}..{indices[-1]}:")
    for name, rs in sorted(by_scenario.items()):
        print(f"  scenario {name:13s} {_rate(rs)}")
    for name, rs in sorted(by_event.items()):
        print(f"  event    {name:13s} {_rate(rs)}")
    print(f"  all                    {_rate(rows)}   off-road episodes: {sum(r['offroad'] for r in rows)}")
    departs: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        for label, dep in r["labels"]:
            departs[label].append(dep)
    print(f"samples whose expert plan departs > {DEPART_M} m from constant velocity, per label:")
    for label, ds in sorted(departs.items()):
        print(f"  {label:16s} {np.mean(ds):.2f} (n={len(ds)})")
    print(f"wall {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
