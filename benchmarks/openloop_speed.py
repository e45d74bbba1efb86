"""Time to score nuScenes-val-sized open-loop evaluation (6,019 samples) from arrays.

    .venv/bin/python benchmarks/openloop_speed.py [--samples 6019] [--agents 30] [--chunk 512] [--write DIR]

`--write DIR` also writes DIR/pred.npz, DIR/gt_dense.npz (occupancy (N, 6, 200, 200) bool) and
DIR/gt_packed.npz (occupancy_packed, np.packbits) for timing `drivedistill eval openloop` end to end:
    farm-bench -- .venv/bin/drivedistill eval openloop --pred DIR/pred.npz --gt DIR/gt_packed.npz

Occupancy of realistic density: `--agents` random 4.5 × 1.9 m vehicle boxes per step within the grid,
rasterised with the metric's own polygon fill (not timed). GT: straight paths at 0-15 m/s; predictions:
GT plus noise growing with time. Timed: `OpenLoopAccumulator.update` over all chunks + `result`, for
each ego-box variant. Only numpy; single process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from drivedistill.metrics.occupancy import GRID_SIZE, NUM_STEPS, rasterise_boxes
from drivedistill.metrics.openloop import OpenLoopAccumulator, OpenLoopOptions, format_table


def make_chunk(
    rng: np.random.Generator, n: int, agents: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pred (n, 6, 2), gt (n, 6, 2), valid (n, 6), occupancy (n, 6, 200, 200) of random samples."""
    t = 0.5 * np.arange(1, NUM_STEPS + 1)
    speed = rng.uniform(0, 15, (n, 1))
    gt = np.stack([speed * t, rng.normal(0, 0.05, (n, 1)) * t**2], -1)
    pred = gt + rng.normal(0, 1, (n, NUM_STEPS, 2)) * (0.15 * t)[None, :, None]
    valid = np.ones((n, NUM_STEPS), bool)
    valid[rng.random(n) < 0.05, -2:] = False  # a few samples near the end of their scene
    b = n * NUM_STEPS * agents
    grid = rasterise_boxes(
        rng.uniform(-48, 48, (b, 2)),
        rng.uniform(-np.pi, np.pi, b),
        np.full(b, 4.5),
        np.full(b, 1.9),
        np.repeat(np.arange(n * NUM_STEPS), agents),
        n * NUM_STEPS,
    )
    return pred, gt, valid, grid.reshape(n, NUM_STEPS, GRID_SIZE, GRID_SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=6019)
    parser.add_argument("--agents", type=int, default=30, help="vehicle boxes per step")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--write", help="directory for pred.npz, gt_dense.npz and gt_packed.npz")
    args = parser.parse_args()
    kept: list[tuple[np.ndarray, ...]] = []
    rng = np.random.default_rng(0)
    accs = {e: OpenLoopAccumulator(OpenLoopOptions("vehicles", e)) for e in ("translated", "rotated")}
    timings = dict.fromkeys(accs, 0.0)
    t_gen, occupied = 0.0, 0.0
    for start in range(0, args.samples, args.chunk):  # one chunk in memory at a time
        t0 = time.perf_counter()
        chunk = make_chunk(rng, min(args.chunk, args.samples - start), args.agents)
        t_gen += time.perf_counter() - t0
        occupied += float(chunk[3].sum())
        if args.write:
            kept.append(chunk)
        for ego_box, acc in accs.items():
            t0 = time.perf_counter()
            acc.update(*chunk)
            timings[ego_box] += time.perf_counter() - t0
    results = {}
    for ego_box, acc in accs.items():
        t0 = time.perf_counter()
        results[ego_box] = acc.result()
        timings[ego_box] += time.perf_counter() - t0
    density = occupied / (args.samples * NUM_STEPS * GRID_SIZE**2)
    print(
        f"{args.samples} samples, {args.agents} boxes/step, occupied fraction {density:.3%}, data gen {t_gen:.2f} s"
    )
    for ego_box, dt in timings.items():
        print(f"ego_box={ego_box:<10} score time {dt:.3f} s  ({1e3 * dt / args.samples:.3f} ms/sample)")
    print(format_table(results["translated"]))
    if args.write:
        write_files(args.write, kept)


def write_files(directory: str, chunks: list[tuple[np.ndarray, ...]]) -> None:
    from pathlib import Path

    from drivedistill.metrics.occupancy import PackedOccupancy

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pred, gt, valid, occ = (np.concatenate([c[k] for c in chunks]) for k in range(4))
    tokens = np.array([f"s{i:05d}" for i in range(len(gt))])
    np.savez(out / "pred.npz", trajectory=pred, tokens=tokens)
    np.savez(out / "gt_dense.npz", trajectory=gt, valid=valid, occupancy=occ, tokens=tokens)
    bits = PackedOccupancy.pack(occ).bits
    np.savez(out / "gt_packed.npz", trajectory=gt, valid=valid, occupancy_packed=bits, tokens=tokens)
    print(
        f"wrote {out}/pred.npz, gt_dense.npz ({occ.nbytes / 1e9:.2f} GB), gt_packed.npz ({bits.nbytes / 1e6:.0f} MB)"
    )


if __name__ == "__main__":
    main()
