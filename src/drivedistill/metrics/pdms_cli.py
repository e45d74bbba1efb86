"""`drivedistill eval pdms`: NAVSIM PDMS v1.1 of plans on metric scenes, or of a planner on AV2 logs.

drivedistill eval pdms --scenes DIR --plans PLANS.npz --json OUT.json
    PLANS.npz: `tokens` (N,) str and `poses` (N, 8, 3) rear-axle frame at 0.5 s
drivedistill eval pdms --source av2 --root ../shared/data/argoverse2 --planner human [--json OUT.json]
    planners: registered kind "planner" (human, constant_velocity, pdm_closed)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene, load_scenes, save_scenes
from drivedistill.metrics.pdms import KEYS, PDMSReport, score_plans


def _read_plans(path: Path, scenes: list[MetricScene]) -> list[np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: plans file not found")
    with np.load(path, allow_pickle=False) as z:
        for key in ("tokens", "poses"):
            if key not in z:
                raise KeyError(f"{path}: missing array '{key}'; expected tokens (N,) str and poses (N, 8, 3)")
        tokens, poses = [str(t) for t in z["tokens"]], z["poses"]
    if len(tokens) != len(poses):
        raise ValueError(f"{path}: {len(tokens)} tokens but {len(poses)} plans")
    by_token = dict(zip(tokens, poses))
    missing = [s.token for s in scenes if s.token not in by_token]
    if missing:
        raise KeyError(f"{path}: no plan for {len(missing)} scene(s), e.g. {missing[:3]}")
    return [by_token[s.token] for s in scenes]


def _scenes_from_source(source: str, root: str | None) -> list[MetricScene]:
    from drivedistill import registry

    entry = registry.get("source", source)
    cfg = entry.default_config()
    if root is not None:
        cfg.root = root
    built = entry.builder(cfg)
    if not hasattr(built, "metric_scenes"):
        raise TypeError(f"source '{source}' does not provide metric_scenes(); it cannot be scored with PDMS")
    scenes: list[MetricScene] = built.metric_scenes()
    return scenes


def print_report(report: PDMSReport, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    out = report.to_json()
    table = Table(title=f"{title} — NAVSIM PDMS v1.1, {out['num_scored']}/{out['num_scenes']} scenes scored")
    for key in KEYS:
        table.add_column(key.upper(), justify="right")
    table.add_row(*(f"{100 * out['mean'][k]:.1f}" for k in KEYS))
    console = Console()
    console.print(table)
    for f in out["failures"]:
        console.print(f"[red]failed[/red] {f['token']}: {f['reason']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="drivedistill eval pdms",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenes", type=Path, help="directory of MetricScene .npz files")
    parser.add_argument("--plans", type=Path, help="PLANS.npz with tokens (N,) and poses (N, 8, 3)")
    parser.add_argument("--source", help="a registered source providing metric scenes (e.g. av2)")
    parser.add_argument("--root", help="the source's data root")
    parser.add_argument("--planner", help="a registered planner (human, constant_velocity, pdm_closed)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--write-scenes", type=Path, help="also save the metric scenes to this directory")
    args = parser.parse_args(argv)
    if (args.scenes is None) == (args.source is None):
        parser.error("give exactly one of --scenes DIR or --source NAME")

    t0 = time.perf_counter()
    scenes = (
        load_scenes(args.scenes) if args.scenes is not None else _scenes_from_source(args.source, args.root)
    )
    if args.write_scenes is not None:
        save_scenes(scenes, args.write_scenes)
    references: dict[str, np.ndarray] = {}
    if args.plans is not None:
        plans = _read_plans(args.plans, scenes)
        title = str(args.plans)
    elif args.planner is not None:
        from drivedistill import registry

        planner = registry.build("planner", args.planner)
        plans = [planner.plan(s) for s in scenes]
        if args.planner == "pdm_closed":  # the plan is its own EP reference
            references = {s.token: p for s, p in zip(scenes, plans)}
        title = f"planner {args.planner}"
    else:
        parser.error("give --plans PLANS.npz or --planner NAME")
    report = score_plans(scenes, plans, references=references or None)
    print_report(report, title)
    print(f"{len(scenes)} scenes in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.json is not None:
        from drivedistill.utils.io import atomic_write_json

        atomic_write_json(args.json, report.to_json())
    return 0 if not report.failures else 1
