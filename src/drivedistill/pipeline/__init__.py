"""`drivedistill run`: the whole study in one command, cached stage by stage.

    drivedistill run [--preset smoke|default|full] [--config F] [--out RUN] [--jobs N] [--seeds=[0,1,2] ...]

Writes `RUN/results.json` and the self-contained `RUN/report.html`. A second run skips finished
stages; an interrupted run resumes; changing a knob re-runs only what depends on it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drivedistill run",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Any --section.key=value overrides the preset, e.g. --seeds=[0,1,2] --train.epochs=4 "
        "--world.num_episodes=40 --models='[{student: transfuser, method: imitation}]' --teachers=per_seed",
    )
    parser.add_argument(
        "--preset",
        default="default",
        help="smoke (≈1 min), default (make run), full (5 seeds, a teacher per seed, every ablation and "
        "control), curves (learning curves: 500 / 2000 / 8000 labelled samples), paper (the papers' scale: "
        "pretrained Qwen2.5-VL-3B on a GPU node; docs/pretrained-vlm.md)",
    )
    parser.add_argument("--config", type=Path, default=None, help="a YAML file merged over the preset")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/<preset>)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run nothing: list the stages that would run (with what each took last time) and exit",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: print per stage the parameter count, GPU memory and hours on 8 A100 / H100, "
        "computed from the config (always on for --preset paper; docs/pretrained-vlm.md)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the models' stages in N processes of one torch thread each (pipeline/jobs.py); "
        "2 on a 2-core machine finishes sooner than one process of two threads",
    )
    args, overrides = parser.parse_known_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be ≥ 1, got {args.jobs}")
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; overrides look like --section.key=value")

    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    from rich.console import Console

    from drivedistill.pipeline.config import load_study
    from drivedistill.pipeline.study import run_study

    cfg = load_study(args.preset, args.config, overrides)
    out = args.out or Path("runs") / args.preset
    console = Console()
    console.rule(
        f"drivedistill run · preset {cfg.preset} · {len(cfg.models)} models × {len(cfg.seeds)} seeds → {out}"
    )
    if args.dry_run:
        code = _print_plan(console, run_study(cfg, out, dry_run=True), out)
        if args.estimate or cfg.preset == "paper":  # per stage params / GPU memory / hours (estimate.py)
            from drivedistill.estimate import estimate_study, format_estimates

            for line in format_estimates(estimate_study(cfg)):
                console.print(line, soft_wrap=True, highlight=False, markup=False)
        return code
    t0 = time.perf_counter()
    if args.jobs > 1:
        from drivedistill.pipeline.jobs import run_parallel

        results = run_parallel(cfg, out, args.jobs)
    else:
        results = run_study(cfg, out)
    minutes = (time.perf_counter() - t0) / 60
    console.rule(f"done in {minutes:.1f} min")
    from drivedistill.report import markdown_table

    console.print(markdown_table(results))
    console.print(f"\nreport: {out / 'report.html'}\nresults: {out / 'results.json'}")
    return 0


def _print_plan(console: Any, plan: dict[str, Any], out: Path) -> int:
    """The dry run's answer: the rows (with their baseline, the row a control controls for, the labelled
    samples of a learning-curve point), what would run, and an estimate from earlier runs."""
    for row in plan.get("rows", []):
        notes = [f"{k} {row[k]}" for k in ("baseline", "controls", "max_samples") if row.get(k) is not None]
        console.print(f"  row {row['row']:<40} {row['kind']:<9} {' · '.join(notes)}", soft_wrap=True)
    if plan["everything"]:
        console.print(f"{out} has no finished collect stage: every stage would run.")
        return 0
    planned: dict[str, float | None] = plan["planned"]
    console.print(f"{len(plan['cached'])} stages finished, {len(planned)} would run:")
    for name, seconds in planned.items():
        last = f"{seconds / 60:6.1f} min last time" if seconds is not None else "   never ran here"
        console.print(f"  {name:<44} {last}")
    known = [s for s in planned.values() if s is not None]
    if planned:
        unknown = len(planned) - len(known)
        more = f" + {unknown} stages that never ran here" if unknown else ""
        console.print(f"estimate: {sum(known) / 60:.1f} min{more}")
    return 0
