"""`drivedistill run --jobs N`: which unit a free worker runs next (the run itself: test_pipeline).

The scheduler is driven here by a simulated clock: a model's unit takes its rough cost in time units,
a recipe unit the rough cost of its stages.
"""

from __future__ import annotations

import dataclasses

import pytest

from drivedistill.pipeline.config import StudyConfig, load_study
from drivedistill.pipeline.jobs import Scheduler, Unit, model_cost
from drivedistill.pipeline.recipes import stage_cost, static_needs


def recipe_stages(cfg: StudyConfig) -> set[str]:
    return {s for stages in static_needs(cfg).values() for s in stages}


def simulate(cfg: StudyConfig, jobs: int, pending: set[str]) -> tuple[float, list[tuple[float, Unit]]]:
    """Run the scheduler with `jobs` workers; returns the makespan and (start, unit) per unit."""
    seeds = len(cfg.seeds)
    needs = static_needs(cfg)
    scheduler = Scheduler(cfg.models, pending, seeds, needs)
    now = 0.0
    running: list[tuple[float, Unit]] = []
    log: list[tuple[float, Unit]] = []
    computed: dict[str, float] = {}  # recipe stage → when the unit that computed it finished
    while not scheduler.done:
        while len(running) < jobs and (unit := scheduler.next()) is not None:
            claims = scheduler.claims[unit.label]
            if unit.recipes_only:
                assert claims and not claims & computed.keys(), f"{unit.label} claims {claims}"
                duration = sum(stage_cost(s) for s in claims)
            else:  # every recipe stage it reads exists
                missing = [s for s in needs[unit.model.name] if s in pending and s not in computed]
                assert not claims and not missing, f"{unit.label} started at {now} before {missing}"
                duration = model_cost(unit.model, seeds)
            running.append((now + duration, unit))
            log.append((now, unit))
        assert running, "deadlock: nothing running, models still waiting"
        running.sort(key=lambda r: r[0])
        now, unit = running.pop(0)
        for stage in scheduler.claims[unit.label]:
            assert stage not in computed, f"{stage} computed twice"
            computed[stage] = now
        scheduler.finished(unit)
    return now, log


def serial_cost(cfg: StudyConfig) -> float:
    needed = recipe_stages(cfg)
    return sum(model_cost(m, len(cfg.seeds)) for m in cfg.models) + sum(stage_cost(s) for s in needed)


@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_every_model_runs_once_and_every_recipe_stage_once(preset: str, jobs: int) -> None:
    cfg = load_study(preset)
    needed = recipe_stages(cfg)
    makespan, log = simulate(cfg, jobs, needed)
    assert sorted(u.label for _, u in log if not u.recipes_only) == sorted(cfg.model_names())
    recipe_units = [u for _, u in log if u.recipes_only]
    assert 1 <= len(recipe_units) <= len(needed)  # one unit may compute a chain (LAM → teacher)
    serial = serial_cost(cfg)
    assert makespan == pytest.approx(serial) if jobs == 1 else makespan < serial


def test_recipe_units_go_first_and_free_their_models_when_done() -> None:
    full = load_study("full", overrides=["--teachers=once"])  # one instance per recipe stage
    cfg = dataclasses.replace(full, models=[m for m in full.models if not m.controls])
    needs = static_needs(cfg)
    scheduler = Scheduler(cfg.models, recipe_stages(cfg), len(cfg.seeds), needs)
    first, second, third = scheduler.next(), scheduler.next(), scheduler.next()
    assert first is not None and second is not None and third is not None
    assert all(u.recipes_only for u in (first, second, third))
    # the costliest model's recipes first: an EvoDrive rung's perception + oracle stages
    assert first.model.method == "evodrive"
    assert scheduler.claims[first.label] == {"evodrive_perception", "evodrive_oracle"}
    claimed = sorted(sorted(scheduler.claims[u.label]) for u in (second, third))
    assert claimed == [["annotate"], ["latent_lam", "latent_teacher"]]
    fourth = scheduler.next()  # the VLAs wait for perception; an independent model runs meanwhile
    assert fourth is not None and not fourth.recipes_only and not needs[fourth.model.name]
    scheduler.finished(first)
    after = [scheduler.next() for _ in range(2)]
    assert all(u is not None and not u.recipes_only for u in after)
    assert {u.model.student for u in after if u is not None} == {"vla"}  # free, and the costliest now


def test_finished_recipes_block_nothing() -> None:
    cfg = load_study("full")
    scheduler = Scheduler(
        cfg.models, set(), len(cfg.seeds), static_needs(cfg)
    )  # a resumed run: recipe stages cached
    order = [scheduler.next() for _ in cfg.models]
    assert all(u is not None and not u.recipes_only for u in order) and scheduler.next() is None
    costs = [model_cost(u.model, 3) for u in order if u is not None]
    assert costs == sorted(costs, reverse=True)  # longest first


def test_two_workers_balance_the_default_and_full_presets() -> None:
    for preset in ("default", "full"):
        cfg = load_study(preset)
        makespan, _ = simulate(cfg, 2, recipe_stages(cfg))
        assert makespan < 0.6 * serial_cost(cfg), preset
