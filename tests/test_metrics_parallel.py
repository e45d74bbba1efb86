"""PDMS / EPDMS scoring through the executor (#20 pt 4): the report's JSON is identical to scoring in
one call, linked scenes (extended comfort, two-stage) stay together, a failing task is reported."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest

from drivedistill.executor import Executor, ExecutorConfig, make_executor
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.metrics.parallel import linked_groups, score_plans_parallel
from drivedistill.metrics.pdms import PDMSConfig, score_plans
from drivedistill.sim.scenarios import Agent, straight_plan, straight_road_scene


def scenes_and_plans() -> tuple[list[MetricScene], list[np.ndarray]]:
    """9 scenes: varied speeds and stopped cars; t1 follows t0 (EC), t5 and t6 follow up t4 (two-stage),
    t8's plan is NaN (a reported failure)."""
    scenes, plans = [], []
    for i in range(9):
        agents = [Agent(x=20.0 + 5 * i, y=0.0)] if i % 3 == 0 else []
        s = straight_road_scene(speed=6.0 + i, agents=agents, token=f"t{i}")
        if i == 1:
            s = dataclasses.replace(s, previous_token="t0")
        if i in (5, 6):
            s = dataclasses.replace(s, parent_token="t4", ego_pose=np.array([float(i), 0.5, 0.0]))
        scenes.append(s)
        plan = straight_plan(6.0 + i, accel=-1.5 * (i % 4))
        plans.append(np.full_like(plan, np.nan) if i == 8 else plan)
    return scenes, plans


def test_linked_scenes_are_grouped() -> None:
    scenes, _ = scenes_and_plans()
    assert linked_groups(scenes) == [[0, 1], [2], [3], [4, 5, 6], [7], [8]]


@pytest.fixture(scope="module")
def pool() -> Iterator[Executor]:
    with make_executor(ExecutorConfig(workers=2, retries=1)) as ex:  # spawned once for the module
        yield ex


def test_process_pool_report_is_identical(pool: Executor) -> None:
    scenes, plans = scenes_and_plans()
    for protocol in ("navsim-v1.1", "navsim-v2"):
        cfg = PDMSConfig(protocol=protocol)
        expected = json.dumps(score_plans(scenes, plans, cfg, failures=[("gone", "unreadable")]).to_json())
        got = score_plans_parallel(scenes, plans, cfg, pool, chunk_size=2, failures=[("gone", "unreadable")])
        assert json.dumps(got.to_json()) == expected, protocol
        assert [f.token for f in got.failures] == ["gone", "t8"]


def test_failed_task_becomes_reported_scene_failures(pool: Executor) -> None:
    scenes, plans = scenes_and_plans()
    object.__setattr__(scenes[2], "agent_times", None)  # corrupted after validation: the task raises
    with pytest.raises(TypeError):
        score_plans(scenes[2:3], plans[2:3])
    report = score_plans_parallel(scenes, plans, PDMSConfig(), pool, chunk_size=1)
    reasons = {f.token: f.reason for f in report.failures}
    assert [r.token for r in report.scenes] == ["t0", "t1", "t3", "t4", "t5", "t6", "t7"]
    assert list(reasons) == ["t2", "t8"]
    assert reasons["t2"].startswith("scoring task failed after 2 attempt(s): TypeError")
    assert report.to_json()["num_scenes"] == 9  # failed scenes stay in the denominator
