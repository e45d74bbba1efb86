"""`drivedistill run --jobs N`: the study's stages in N processes of one torch thread each.

The models of this study are small: a second intra-op thread speeds a stage up by far less than 2×, so
on a 2-core machine two one-thread processes finish the study sooner than one two-thread process
(measured: docs/LOG.md). The run goes in three phases:

1. collect, in this process (every other stage reads the store);
2. the models, split into N groups that share no recipe stage (a method and the recipe stages it reads
   stay in one group: VLM-AD + annotate, LatentVLA + LAM + teacher, the VLAs + perception + oracle),
   balanced by a rough cost per model, each group a `run_study(part=True)` in a spawned process with
   one torch thread, its output in `RUN/logs/job-K.log`;
3. `run_study` here over the whole config: every stage is cached by now; it adds the reference rows,
   measures each model's latency alone (the jobs leave it out: it would be measured beside the other
   job), writes results.json and the report.

Stages are the same stages with the same keys as in a one-process run, so the two kinds of run extend
each other. Results are reproducible for a given thread count: a one-thread stage is not bit-identical
to a two-thread one (different CPU reduction order).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import re
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.pipeline.recipes import extras_for

# rough cost of one (model, seed) — train + eval — and of each recipe stage, relative to
# transfuser/imitation on the default preset (measured there); used only to balance the jobs
_STUDENT_COST = {"vla": 1.1, "ipad": 1.2, "transfuser": 1.0, "ego_mlp": 0.25, "constant_velocity": 0.2}
_METHOD_FACTOR = {"evodrive": 1.6, "vlm_ad": 1.5, "latent_vla": 1.35, "latent_vla_distill": 0.7}
_RECIPE_COST = {
    "annotate": 0.45,
    "latent_lam": 0.75,
    "latent_teacher": 0.5,
    "evodrive_perception": 0.15,
    "evodrive_oracle": 1.25,
}
_RUNNING = re.compile(r"\[\d+\] run (\S+)")


def model_cost(model: ModelSpec, seeds: int) -> float:
    return _STUDENT_COST.get(model.student, 1.0) * _METHOD_FACTOR.get(model.method, 1.0) * seeds


def partition(cfg: StudyConfig, jobs: int) -> list[list[ModelSpec]]:
    """Split `cfg.models` into at most `jobs` groups, models that read a common recipe stage together,
    greedily balanced by cost (largest first); each group keeps the config's model order."""
    groups: list[tuple[set[str], list[ModelSpec]]] = []  # (recipe stages, models) sharing them
    for model in cfg.models:
        needs = set(extras_for(model.method))
        joined = [g for g in groups if g[0] & needs]
        merged: tuple[set[str], list[ModelSpec]] = (set(needs), [model])
        for g in joined:
            merged[0].update(g[0])
            merged[1].extend(g[1])
            groups.remove(g)
        groups.append(merged)

    def cost(group: tuple[set[str], list[ModelSpec]]) -> float:
        recipes = sum(_RECIPE_COST.get(r, 0.5) for r in group[0])
        return recipes + sum(model_cost(m, len(cfg.seeds)) for m in group[1])

    bins: list[tuple[float, list[ModelSpec]]] = [(0.0, []) for _ in range(max(1, jobs))]
    for group in sorted(groups, key=cost, reverse=True):
        i = min(range(len(bins)), key=lambda k: bins[k][0])
        bins[i] = (bins[i][0] + cost(group), bins[i][1] + group[1])
    order = {m.name: i for i, m in enumerate(cfg.models)}
    return [sorted(b[1], key=lambda m: order[m.name]) for b in bins if b[1]]


def _job(cfg: StudyConfig, out: Path, log: Path) -> dict[str, float]:
    """One group in a spawned process: one torch thread, output to `log`."""
    import torch

    from drivedistill.pipeline.study import run_study

    torch.set_num_threads(1)
    stdout, stderr = sys.stdout, sys.stderr
    with open(log, "a", buffering=1) as f:
        sys.stdout = sys.stderr = f
        try:
            timings: dict[str, float] = run_study(cfg, out, part=True)["stage_seconds"]
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        return timings


def _current_stage(log: Path) -> str:
    """The stage a job's log last started ("" before the first)."""
    if not log.exists():
        return ""
    found = _RUNNING.findall(log.read_text(errors="replace")[-20000:])
    return found[-1] if found else ""


def run_parallel(cfg: StudyConfig, out: Path, jobs: int) -> dict[str, Any]:
    """The study in `jobs` processes (see module docstring); returns results.json's content."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drivedistill.pipeline.cache import StageRunner
    from drivedistill.pipeline.study import collect_stage, run_study

    started = time.perf_counter()
    collector = StageRunner(out)
    collect_stage(collector, cfg)
    planned = run_study(cfg, out, dry_run=True)["planned"]
    groups = partition(cfg, jobs)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{len(planned)} stages to run in {len(groups)} jobs of one thread (logs: {logs}/job-K.log):")
    for k, group in enumerate(groups):
        print(f"  job {k}: {', '.join(m.name for m in group)}")
    done_before = {p.parent.name for p in (out / "stages").glob("*/_done.json")}
    timings: dict[str, float] = dict(collector.timings)
    ctx = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(len(groups), mp_context=ctx) as pool,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[now]}"),
        ) as progress,
    ):
        paths = [logs / f"job-{k}.log" for k in range(len(groups))]
        futures: list[Future[dict[str, float]]] = [
            pool.submit(_job, dataclasses.replace(cfg, models=group), out, path)
            for group, path in zip(groups, paths)
        ]
        task = progress.add_task("stages", total=max(1, len(planned)), now="")
        finished: set[str] = set()
        while not all(f.done() for f in futures):
            now_done = {p.parent.name for p in (out / "stages").glob("*/_done.json")} - done_before
            for name in sorted(now_done - finished):  # a line per finished stage (also in a log file)
                progress.console.print(f"[{len(finished) + 1}/{len(planned)}] done {name.rsplit('-', 1)[0]}")
                finished.add(name)
            now = " · ".join(f"job {k}: {_current_stage(p) or '…'}" for k, p in enumerate(paths))
            progress.update(task, completed=len(finished), now=now)
            time.sleep(1.0)
        for k, f in enumerate(futures):
            if f.exception() is not None:
                raise RuntimeError(f"job {k} failed; its log: {paths[k]}") from f.exception()
            timings.update(f.result())
    return run_study(cfg, out, timings=timings, started=started)
