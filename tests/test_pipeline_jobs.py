"""`drivedistill run --jobs N`: how the models are split between the jobs (the run itself: test_pipeline)."""

from __future__ import annotations

import pytest

from drivedistill.pipeline.config import load_study
from drivedistill.pipeline.jobs import model_cost, partition
from drivedistill.pipeline.recipes import extras_for


@pytest.mark.parametrize("preset", ["default", "full"])
@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_jobs_share_no_recipe_stage_and_cover_every_model_once(preset: str, jobs: int) -> None:
    cfg = load_study(preset)
    groups = partition(cfg, jobs)
    assert 1 <= len(groups) <= jobs
    names = [m.name for g in groups for m in g]
    assert sorted(names) == sorted(cfg.model_names())  # every model once
    order = cfg.model_names()
    for g in groups:  # the config's order within a job (cheapest first in the presets)
        assert [m.name for m in g] == [n for n in order if n in {m.name for m in g}]
    recipes = [{r for m in g for r in extras_for(m.method)} for g in groups]
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            assert not recipes[i] & recipes[j]  # two jobs never run the same recipe stage


def test_jobs_are_balanced_on_the_default_preset() -> None:
    cfg = load_study("default")
    costs = [sum(model_cost(m, 1) for m in g) for g in partition(cfg, 2)]
    assert len(costs) == 2 and max(costs) < 0.7 * sum(costs)
    # the VLAs read the perception/oracle stages: they stay together
    vla_jobs = {i for i, g in enumerate(partition(cfg, 2)) for m in g if m.student == "vla"}
    assert len(vla_jobs) == 1
