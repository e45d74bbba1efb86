"""`drivedistill eval pdms`: NAVSIM PDMS of plans on metric scenes, or of a planner on AV2 logs.

--protocol navsim-v1.1 (the default: PDMS) or navsim-v2 (EPDMS); every printed number names its protocol.

drivedistill eval pdms --scenes DIR --plans PLANS.npz --json OUT.json
    PLANS.npz: `tokens` (N,) str and `poses` (N, 8, 3) rear-axle frame at 0.5 s
drivedistill eval pdms --source av2 --root ../shared/data/argoverse2 --planner human [--json OUT.json]
drivedistill eval pdms --store STORE [--split val] --planner pdm_closed --protocol navsim-v2
    planners: registered kind "planner" (human = the logged future, i.e. the world's expert;
    constant_velocity; pdm_closed); --store builds the metric scenes of a SceneStore split
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from drivedistill.executor import add_executor_args, executor_config, make_executor
from drivedistill.geometry.metric_scene import MetricScene, read_scenes, save_scenes
from drivedistill.metrics.parallel import score_plans_parallel
from drivedistill.metrics.pdms import PROTOCOL, PROTOCOLS, SCORE_KEY, PDMSConfig, PDMSReport


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


def _scenes_from_store(store_dir: Path, split: str | None) -> tuple[list[MetricScene], list[tuple[str, str]]]:
    """Metric scenes of a SceneStore split (`metrics.plans.metric_scene_of`: by the scene's source); a
    scene that cannot be read or converted is a counted failure (token, reason), not an abort."""
    from drivedistill.data.store import SceneStore, StoreError
    from drivedistill.metrics.plans import metric_scene_of

    store = SceneStore(store_dir)
    tokens = store.tokens(split)
    if not tokens:
        raise StoreError(f"{store_dir}: no samples in split {split!r}; give --split train, val or all")
    scenes: list[MetricScene] = []
    failures: list[tuple[str, str]] = []
    for t in tokens:
        try:
            scenes.append(metric_scene_of(store.load(t)))
        except (StoreError, ValueError, KeyError, OSError) as e:  # ValidationError is a ValueError
            failures.append((t, f"{store_dir}: sample {t}: {type(e).__name__}: {e}"))
    return scenes, failures


def print_report(report: PDMSReport, title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = report.to_json()
    name = "EPDMS" if SCORE_KEY[report.protocol] == "epdms" else "PDMS"
    caption = escape(
        f"{title} — {name} [{report.protocol}], {out['num_scored']}/{out['num_scenes']} scenes scored"
    )
    table = Table(title=caption)
    for key in report.keys:
        table.add_column(key.upper(), justify="right")
    table.add_row(*(f"{100 * out['mean'][k]:.1f}" for k in report.keys))
    console = Console()
    console.print(table)
    two = out.get("two_stage")
    if two is not None:
        console.print(
            f"two-stage {name} ({report.protocol}): {100 * two['mean'][SCORE_KEY[report.protocol]]:.1f} "
            f"({two['num_groups']} groups; stage 1 {100 * two['stage1'][SCORE_KEY[report.protocol]]:.1f}, "
            f"stage 2 {100 * two['stage2'][SCORE_KEY[report.protocol]]:.1f})"
        )
    if report.protocol != PROTOCOL:
        console.print(
            f"human filter lifted a penalty in {len(out['human_filter'])} scene(s); "
            f"EC compared with the previous frame in {out['ec_evaluated']}"
        )
    for f in out["failures"]:
        console.print(f"[red]failed[/red] {escape(f['token'])}: {escape(f['reason'])}")


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
    parser.add_argument("--store", type=Path, help="a SceneStore: score its --split's samples")
    parser.add_argument(
        "--split", default="val", help="with --store: the split (default val; 'all' = every sample)"
    )
    parser.add_argument("--planner", help="a registered planner (human, constant_velocity, pdm_closed)")
    parser.add_argument(
        "--planner-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the planner's config, repeatable (e.g. pdm_closed: forecast=log_replay, accel_lag=1.0)",
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=PROTOCOL,
        help=f"navsim-v1.1 (PDMS, the default) or navsim-v2 (EPDMS); default {PROTOCOL}",
    )
    parser.add_argument("--write-scenes", type=Path, help="also save the metric scenes to this directory")
    parser.add_argument("--chunk-size", type=int, default=64, help="scenes per scoring task (--executor)")
    add_executor_args(parser)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.scenes, args.source, args.store)) != 1:
        parser.error("give exactly one of --scenes DIR, --source NAME or --store STORE")

    t0 = time.perf_counter()
    unreadable: list[tuple[str, str]] = []
    if args.scenes is not None:
        scenes, unreadable = read_scenes(args.scenes)  # a broken file is a counted failure, not an abort
    elif args.store is not None:
        scenes, unreadable = _scenes_from_store(args.store, None if args.split == "all" else args.split)
    else:
        scenes = _scenes_from_source(args.source, args.root)
    if args.write_scenes is not None:
        save_scenes(scenes, args.write_scenes)
    references: dict[str, np.ndarray] = {}
    if args.plans is not None:
        plans = _read_plans(args.plans, scenes)
        title = str(args.plans)
    elif args.planner is not None:
        from drivedistill import registry
        from drivedistill.config import from_dict, parse_overrides, to_dict

        entry = registry.get("planner", args.planner)
        pcfg = entry.default_config()
        if hasattr(pcfg, "selection"):  # PDM-Closed picks its proposal with the protocol's scorer
            pcfg = dataclasses.replace(pcfg, selection=args.protocol)
        if args.planner_option:
            pcfg = from_dict(type(pcfg), {**to_dict(pcfg), **parse_overrides(args.planner_option)}, "planner")
        planner = entry.builder(pcfg)
        plans = [planner.plan(s) for s in scenes]
        if args.planner == "pdm_closed":  # the plan is its own EP reference
            references = {s.token: p for s, p in zip(scenes, plans)}
        title = f"planner {args.planner}" + "".join(f" {o}" for o in args.planner_option)
    else:
        parser.error("give --plans PLANS.npz or --planner NAME")
    cfg = PDMSConfig(protocol=args.protocol)
    with make_executor(executor_config(args)) as ex:  # local (in-process by default) | ray
        report = score_plans_parallel(
            scenes, plans, cfg, ex, args.chunk_size, references=references or None, failures=unreadable
        )
    print_report(report, title)
    print(f"{len(scenes)} scenes in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.json is not None:
        from drivedistill.utils.io import atomic_write_json

        atomic_write_json(args.json, report.to_json())
    return 0 if not report.failures else 1
