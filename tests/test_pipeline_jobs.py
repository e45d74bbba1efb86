"""`drivedistill run --jobs N`: which model a free worker runs next (the run itself: test_pipeline).

The scheduler is driven here by a simulated clock: each model takes its rough cost in time units.
"""

from __future__ import annotations

import pytest

from drivedistill.pipeline.config import ModelSpec, StudyConfig, load_study
from drivedistill.pipeline.jobs import Scheduler, model_cost
from drivedistill.pipeline.recipes import RECIPE_STAGES, extras_for

RECIPES = {name for name, _, _ in RECIPE_STAGES}


def simulate(
    cfg: StudyConfig, jobs: int, pending: set[str]
) -> tuple[float, list[tuple[float, float, ModelSpec]]]:
    """Run the scheduler with `jobs` workers; returns the makespan and (start, end, model) per model."""
    seeds = len(cfg.seeds)
    scheduler = Scheduler(cfg.models, pending, seeds)
    now, running, log = 0.0, [], []
    computed: dict[str, float] = {}  # recipe stage → when its claimer finished
    while not scheduler.done:
        while len(running) < jobs and (model := scheduler.next()) is not None:
            claims = scheduler.claims[model.name]
            for stage in extras_for(model.method):  # every stage it needs is done, or it computes it now
                assert stage in claims or stage not in pending or computed.get(stage, 1e9) <= now, (
                    f"{model.name} started at {now} before {stage} was computed"
                )
            running.append((now + model_cost(model, seeds), now, model))
        assert running, "deadlock: nothing running, models still waiting"
        running.sort(key=lambda r: r[0])
        end, start, model = running.pop(0)
        now = end
        for stage in scheduler.claims[model.name]:
            assert stage not in computed, f"{stage} computed twice"
            computed[stage] = now
        scheduler.finished(model)
        log.append((start, end, model))
    return now, log


@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_every_model_runs_once_and_no_recipe_stage_twice(preset: str, jobs: int) -> None:
    cfg = load_study(preset)
    makespan, log = simulate(cfg, jobs, RECIPES)
    assert sorted(m.name for _, _, m in log) == sorted(cfg.model_names())
    total = sum(model_cost(m, len(cfg.seeds)) for m in cfg.models)
    assert makespan == pytest.approx(total) if jobs == 1 else makespan < total


def test_claimers_go_first_and_recipe_stages_are_claimed_once() -> None:
    cfg = load_study("full")
    scheduler = Scheduler(cfg.models, set(RECIPES), len(cfg.seeds))
    first, second, third = scheduler.next(), scheduler.next(), scheduler.next()
    assert first is not None and second is not None and third is not None
    # the costliest claimer first: an EvoDrive rung claims the perception and oracle stages, so the SFT
    # base (perception) waits; then the two other recipe groups' costliest models
    assert first.method == "evodrive" and scheduler.claims[first.name] == {
        "evodrive_perception",
        "evodrive_oracle",
    }
    assert {second.method, third.method} == {"vlm_ad", "latent_vla"}
    claimed = [s for c in scheduler.claims.values() for s in c]
    assert sorted(claimed) == sorted(set(claimed))
    waiting = {m.name for m in scheduler.waiting}
    assert "vla/vla_sft" in waiting and all(m.method not in {"vla_sft", "evodrive"} for m in [second, third])


def test_finished_recipes_block_nothing() -> None:
    cfg = load_study("full")
    scheduler = Scheduler(cfg.models, set(), len(cfg.seeds))  # a resumed run: recipe stages cached
    order = [scheduler.next() for _ in cfg.models]
    assert None not in order and not scheduler.claims.get("vla/vla_sft")
    costs = [model_cost(m, 3) for m in order if m is not None]
    assert costs == sorted(costs, reverse=True)  # longest first


def test_two_workers_balance_the_default_and_full_presets() -> None:
    for preset in ("default", "full"):
        cfg = load_study(preset)
        total = sum(model_cost(m, len(cfg.seeds)) for m in cfg.models)
        makespan, _ = simulate(cfg, 2, RECIPES)
        assert makespan < 0.6 * total, preset
