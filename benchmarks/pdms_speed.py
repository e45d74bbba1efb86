"""Speed of the PDMS scorer: milliseconds per proposal per core (simulation + scoring).

    .venv/bin/python benchmarks/pdms_speed.py [--proposals 1024] [--av2 ../shared/data/argoverse2]

Proposals are random perturbations of the logged human plan of one scene (an AV2 scene when --av2 is
given, else the hand-made straight road with 4 cars), scored in one batch with the PDM-Closed reference
(computed once, not timed). Runs single-threaded (OMP/MKL/OpenBLAS threads = 1). The reference
implementation needs ~70 ms per trajectory-core.
"""

from __future__ import annotations

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from drivedistill.metrics.pdms import score_proposals  # noqa: E402
from drivedistill.sim.pdm_closed import pdm_closed_plan  # noqa: E402
from drivedistill.sim.scenarios import Agent, straight_road_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proposals", type=int, default=1024)
    parser.add_argument("--av2", help="AV2 root; benchmark on a real scene")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.av2:
        from drivedistill.data.sources.av2 import Av2Config, Av2Source

        src = Av2Source(Av2Config(root=args.av2))
        scene = src.log_scenes(src.logs[0])[8]
    else:
        scene = straight_road_scene(
            agents=[Agent(30, 0, 5), Agent(60, 4, 8), Agent(-20, 0, 12), Agent(45, 4)]
        )
    rng = np.random.default_rng(0)
    t = np.arange(1, 9)[None, :, None] * 0.5
    noise = rng.normal(0, 1, (args.proposals, 1, 3)) * np.array([2.0, 0.4, 0.03]) * t
    proposals = scene.human_future[None] + noise
    reference = pdm_closed_plan(scene)
    best = np.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = score_proposals(scene, proposals, reference=reference)
        best = min(best, time.perf_counter() - t0)
    print(
        f"scene {scene.token}: {args.proposals} proposals, {scene.agent_sizes.shape[0]} agents, "
        f"{len(scene.lane_polygons)} lanes — best of {args.repeats}: {best:.2f} s = "
        f"{1e3 * best / args.proposals:.3f} ms per proposal per core (mean PDMS {out.pdms.mean():.3f})"
    )


if __name__ == "__main__":
    main()
