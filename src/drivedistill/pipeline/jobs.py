"""`drivedistill run --jobs N`: the study's stages in N processes of one torch thread each.

The models of this study are small: a second intra-op thread speeds a stage up by far less than 2×, so
on a 2-core machine two one-thread processes finish the study sooner than one two-thread process
(measured: docs/LOG.md). The run goes in three phases:

1. collect, in this process (every other stage reads the store);
2. the models, handed out as units of work to N spawned worker processes of one torch thread as workers
   come free (`Scheduler`). A model's unit runs its train and eval stages for every seed. Before it, a
   model that needs recipe stages nobody has run yet (its recipe's teacher stages, per seed with
   `teachers: per_seed`) gets a recipe unit that claims and computes just those; models that
   need a claimed stage wait for it, the other workers run independent models meanwhile. No stage is
   ever computed twice. Recipe units go first, then the costliest models (a rough cost per model).
   Output goes to `RUN/logs/<model>.log` (a recipe unit writes into the log of the model it ran for);
3. `run_study` here over the whole config: every stage is cached by now; it adds the reference rows,
   measures each model's latency alone (the workers leave it out: it would be measured beside another
   worker), writes results.json and the report.

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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.pipeline.recipes import method_cost

# rough cost of one (model, seed) — train + eval — relative to transfuser/imitation, measured on the
# full preset (runs/full/results.json stage_seconds, one-thread stages); used only to order the units.
# A recipe method's factor and its stages' costs are declared by its recipe (MethodUse.cost, Stage.cost).
_STUDENT_COST = {"vla": 1.8, "ipad": 1.05, "transfuser": 1.0, "ego_mlp": 0.2, "constant_velocity": 0.15}
_RUNNING = re.compile(r"\[\d+\] run (\S+)")


def model_cost(model: ModelSpec, seeds: int) -> float:
    return _STUDENT_COST.get(model.student, 1.0) * method_cost(model.method) * seeds


@dataclasses.dataclass(frozen=True)
class Unit:
    """What a worker runs: a model's stages (all its seeds), or only the recipe stages it needs."""

    model: ModelSpec
    recipes_only: bool = False

    @property
    def label(self) -> str:
        return f"recipes of {self.model.name}" if self.recipes_only else self.model.name


class Scheduler:
    """Which unit a free worker runs next.

    `pending`: the recipe stages not finished yet. A model whose pending stages are all unclaimed first
    gets a recipe unit that claims and computes them (and nothing else), so the models waiting for them
    are free as soon as they exist; a model whose pending stages are claimed waits; a model with nothing
    pending runs. Recipe units go first, then the costliest model, then the config's order.
    """

    def __init__(
        self, models: list[ModelSpec], pending: set[str], seeds: int, needs: dict[str, list[str]]
    ) -> None:
        self.waiting = list(models)
        self.pending = set(pending)
        self.needs = {name: set(stages) for name, stages in needs.items()}  # row → recipe stages it reads
        self.claims: dict[str, set[str]] = {}  # running unit's label → the recipe stages it computes
        self.seeds = seeds

    def _needs(self, model: ModelSpec) -> set[str]:
        return self.needs.get(model.name, set()) & self.pending

    def next(self) -> Unit | None:
        """The next unit to start, or None while every waiting model waits for a running recipe unit."""
        claimed = set().union(*self.claims.values())
        ready = [(i, m, needs) for i, m in enumerate(self.waiting) if not (needs := self._needs(m)) & claimed]
        if not ready:
            return None
        _, model, needs = min(ready, key=lambda r: (not r[2], -model_cost(r[1], self.seeds), r[0]))
        unit = Unit(model, recipes_only=bool(needs))
        if not unit.recipes_only:
            self.waiting.remove(model)
        self.claims[unit.label] = needs
        return unit

    def finished(self, unit: Unit) -> None:
        self.pending -= self.claims.pop(unit.label)

    @property
    def done(self) -> bool:
        return not self.waiting and not self.claims


def _job(cfg: StudyConfig, out: Path, log: Path, recipes_only: bool) -> dict[str, float]:
    """One unit in a worker process: one torch thread, output to `log`."""
    import torch

    from drivedistill.pipeline.study import run_study

    torch.set_num_threads(1)
    stdout, stderr = sys.stdout, sys.stderr
    with open(log, "a", buffering=1) as f:
        sys.stdout = sys.stderr = f
        try:
            timings: dict[str, float] = run_study(cfg, out, part=True, recipes_only=recipes_only)[
                "stage_seconds"
            ]
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        return timings


def _current_stage(log: Path) -> str:
    """The stage a log last started ("" before the first)."""
    if not log.exists():
        return ""
    found = _RUNNING.findall(log.read_text(errors="replace")[-20000:])
    return found[-1] if found else ""


def log_path(out: Path, model: ModelSpec) -> Path:
    return out / "logs" / (model.name.replace("/", "_") + ".log")


def run_parallel(cfg: StudyConfig, out: Path, jobs: int) -> dict[str, Any]:
    """The study in `jobs` worker processes (see module docstring); returns results.json's content."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from drivedistill.pipeline.cache import StageRunner
    from drivedistill.pipeline.study import collect_stage, run_study

    started = time.perf_counter()
    collector = StageRunner(out, device=cfg.device)
    collect_stage(collector, cfg)
    plan = run_study(cfg, out, dry_run=True)
    planned, needs = plan["planned"], plan["needs"]
    recipe_stages = {s for stages in needs.values() for s in stages}
    scheduler = Scheduler(cfg.models, recipe_stages & set(planned), len(cfg.seeds), needs)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"{len(planned)} stages to run in {jobs} workers of one thread (logs: {out / 'logs'}/MODEL.log)")
    done_before = {p.parent.name for p in (out / "stages").glob("*/_done.json")}
    timings: dict[str, float] = dict(collector.timings)
    running: dict[Future[dict[str, float]], Unit] = {}
    failed: list[tuple[Unit, BaseException]] = []
    with (
        ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),  # from the stages finished so far: rough, the stages differ in cost
            TimeRemainingColumn(),
            TextColumn("{task.fields[now]}"),
        ) as progress,
    ):
        task = progress.add_task("stages", total=max(1, len(planned)), now="")
        finished: set[str] = set()
        while not scheduler.done:
            while not failed and len(running) < jobs and (unit := scheduler.next()) is not None:
                part = dataclasses.replace(cfg, models=[unit.model])
                log = log_path(out, unit.model)
                running[pool.submit(_job, part, out, log, unit.recipes_only)] = unit
            if not running:  # a failure stopped the hand-out and the running units are over
                break
            completed, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in completed:
                unit = running.pop(future)
                error = future.exception()
                if error is not None:
                    failed.append((unit, error))
                else:
                    timings.update(future.result())
                    scheduler.finished(unit)
            now_done = {p.parent.name for p in (out / "stages").glob("*/_done.json")} - done_before
            for name in sorted(now_done - finished):  # a line per finished stage (also in a log file)
                progress.console.print(f"[{len(finished) + 1}/{len(planned)}] done {name.rsplit('-', 1)[0]}")
                finished.add(name)
            now = " · ".join(_current_stage(log_path(out, u.model)) or u.label for u in running.values())
            progress.update(task, completed=len(finished), now=now)
    if failed:
        unit, error = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise RuntimeError(
            f"the stages of {unit.label} failed{others}; its log: {log_path(out, unit.model)}. "
            "Finished stages are kept: the same command resumes."
        ) from error
    return run_study(cfg, out, timings=timings, started=started)
