"""Speed of PDMS scoring: CPU milliseconds per proposal (simulation + scoring), NAVSIM v1.1 and v2.

    .venv/bin/python benchmarks/pdms_speed.py [--protocol navsim-v1.1|navsim-v2|both] [--proposals 512]
        [--av2 ../shared/data/argoverse2 --av2-scenes 8] [--store STORE --world-scenes 8] [--repeats 3]

Each scene is scored the way PDM-style scorers are used: many candidate trajectories (random
perturbations of the logged human plan, growing with time) in one batch with the scene's PDM-Closed
reference and map index (built once per scene, as NAVSIM's metric cache precomputes them; not in the
per-proposal figure, the index's build time is printed beside it). Scenes: the hand-made straight road with 4 cars (always), AV2
scenes spread over the logs (--av2), default-world validation scenes of a SceneStore (--store, converted
with the world's ego as `metrics.plans` does). Per scene the median CPU time (`time.process_time`) over
`--repeats` runs is divided by the number of proposals; the summary is the median and the max over the
scenes, followed by the per-scene figures (in scene order). Single-threaded BLAS (OMP/MKL/OpenBLAS
threads = 1). The reference implementation needs ~70 ms per trajectory-core.
"""

from __future__ import annotations

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from drivedistill.geometry.metric_scene import MetricScene  # noqa: E402
from drivedistill.geometry.scene_index import MapIndex  # noqa: E402
from drivedistill.metrics.pdms import PDMSConfig, score_proposals, score_proposals_v2  # noqa: E402
from drivedistill.sim.pdm_closed import pdm_closed_plan  # noqa: E402
from drivedistill.sim.region import scene_regions  # noqa: E402
from drivedistill.sim.scenarios import Agent, straight_road_scene  # noqa: E402


def av2_scenes(root: str, n: int) -> list[MetricScene]:
    from drivedistill.data.sources.av2 import Av2Config, Av2Source

    src = Av2Source(Av2Config(root=root))
    every = [s for log in src.logs for s in src.log_scenes(log)]
    pick = np.linspace(0, len(every) - 1, min(n, len(every))).round().astype(int)
    return [every[i] for i in pick]


def world_scenes(store_dir: str, n: int) -> list[MetricScene]:
    from drivedistill.data.store import SceneStore
    from drivedistill.geometry.metric_scene import metric_scene_from_scene
    from drivedistill.world.ego import REAR_AXLE_BEHIND_CENTRE, pdms_ego_geometry

    store = SceneStore(store_dir)
    split = "val" if store.tokens("val") else "train"
    tokens = store.tokens(split)
    pick = np.linspace(0, len(tokens) - 1, min(n, len(tokens))).round().astype(int)
    return [
        metric_scene_from_scene(store.load(tokens[i]), REAR_AXLE_BEHIND_CENTRE, pdms_ego_geometry())
        for i in pick
    ]


def proposals_for(scene: MetricScene, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1, 9)[None, :, None] * 0.5
    base = np.where(np.isfinite(scene.human_future), scene.human_future, 0.0)
    return base[None] + rng.normal(0, 1, (k, 1, 3)) * np.array([2.0, 0.4, 0.03]) * t


def time_scene(scene: MetricScene, protocol: str, k: int, repeats: int) -> tuple[float, float, float]:
    """(median CPU ms per proposal, mean score, CPU ms of the scene's map index) of `k` proposals of
    `scene` under `protocol`. The map index (`MapIndex`: polygon unions, lane tree; and its point-in-region
    grids, `sim.region.scene_regions`) and PDM-Closed's
    reference plan are per-scene structures built once, as NAVSIM's metric cache precomputes them; the
    index's build time is reported on its own (amortised over the k proposals it adds index_ms / k)."""
    props = proposals_for(scene, k)
    t0 = time.process_time()
    map_index = MapIndex(scene)
    scene_regions(map_index)
    index_ms = 1e3 * (time.process_time() - t0)
    cfg = PDMSConfig(protocol=protocol)
    reference = pdm_closed_plan(scene, map_index, replace(cfg.pdm_closed, selection=protocol))
    runs, score = [], float("nan")
    for _ in range(repeats):
        t0 = time.process_time()
        if protocol == "navsim-v2":
            out2 = score_proposals_v2(scene, props, cfg, reference=reference, map_index=map_index)
            score = float(out2.scores["epdms"].mean())
        else:
            out = score_proposals(scene, props, cfg, reference=reference, map_index=map_index)
            score = float(out.pdms.mean())
        runs.append(time.process_time() - t0)
    return 1e3 * float(np.median(runs)) / k, score, index_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", default="both", choices=["navsim-v1.1", "navsim-v2", "both"])
    parser.add_argument("--proposals", type=int, default=512)
    parser.add_argument("--av2", help="AV2 root; add AV2 scenes")
    parser.add_argument("--av2-scenes", type=int, default=8)
    parser.add_argument("--store", help="a SceneStore of the default world; add its validation scenes")
    parser.add_argument("--world-scenes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    groups: dict[str, list[MetricScene]] = {
        "straight": [
            straight_road_scene(agents=[Agent(30, 0, 5), Agent(60, 4, 8), Agent(-20, 0, 12), Agent(45, 4)])
        ]
    }
    if args.av2:
        groups["av2"] = av2_scenes(args.av2, args.av2_scenes)
    if args.store:
        groups["world"] = world_scenes(args.store, args.world_scenes)
    protocols = ["navsim-v1.1", "navsim-v2"] if args.protocol == "both" else [args.protocol]
    for protocol in protocols:
        for name, scenes in groups.items():
            per = [time_scene(s, protocol, args.proposals, args.repeats) for s in scenes]
            ms = np.array([p[0] for p in per])
            index_ms = np.array([p[2] for p in per])
            agents = int(np.median([s.agent_sizes.shape[0] for s in scenes]))
            print(
                f"{protocol:12s} {name:9s} {len(scenes)} scene(s) × {args.proposals} proposals "
                f"(median {agents} agents): CPU ms/proposal median {np.median(ms):.3f}, max {ms.max():.3f}; "
                f"map index (once per scene) median {np.median(index_ms):.1f} ms "
                f"(+{np.median(index_ms) / args.proposals:.3f} ms/proposal); "
                f"mean score {np.mean([p[1] for p in per]):.3f}",
                flush=True,
            )
            if len(scenes) > 1:
                print(f"{'':12s} {name:9s} per scene: " + " ".join(f"{m:.3f}" for m in ms), flush=True)


if __name__ == "__main__":
    main()
