"""PDMS / EPDMS scoring split into executor tasks (`drivedistill.executor`: local pool or Ray).

    report = score_plans_parallel(scenes, plans, PDMSConfig(), executor, chunk_size=64)

Gives the same `PDMSReport` as `metrics.pdms.score_plans` on all scenes at once (its `to_json()` is
identical, key order included): scenes linked by `previous_token` (extended comfort, NAVSIM v2) or
`parent_token` (two-stage navhard) always land in the same task, each task runs `score_plans` on its
scenes, and the results are put back in input order. A task that still fails after the executor's
retries turns each of its scenes into a reported `SceneFailure` (counted in the denominator like any
failed scene), never a dropped one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from drivedistill.executor import Executor, InlineExecutor
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.metrics.pdms import PROTOCOL_V2, PDMSConfig, PDMSReport, SceneFailure, score_plans


def linked_groups(scenes: Sequence[MetricScene]) -> list[list[int]]:
    """Indices of scenes grouped by `previous_token` / `parent_token` links (connected components), in
    order of each group's first scene; links to tokens not among `scenes` are ignored."""
    index = {s.token: i for i, s in enumerate(scenes)}
    parent = list(range(len(scenes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, s in enumerate(scenes):
        for other in (s.previous_token, s.parent_token):
            j = index.get(other) if other else None
            if j is not None:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(scenes)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _score_task(
    task: tuple[list[MetricScene], list[np.ndarray], PDMSConfig, dict[str, np.ndarray] | None],
) -> PDMSReport:
    scenes, plans, cfg, references = task
    return score_plans(scenes, plans, cfg, references=references)


def score_plans_parallel(
    scenes: Sequence[MetricScene],
    plans: np.ndarray | Sequence[np.ndarray],
    cfg: PDMSConfig | None = None,
    executor: Executor | None = None,
    chunk_size: int = 64,
    references: dict[str, np.ndarray] | None = None,
    failures: Sequence[tuple[str, str]] = (),
) -> PDMSReport:
    """`score_plans` (same arguments, same report) with tasks of about `chunk_size` scenes on `executor`
    (None or the in-process executor: one `score_plans` call here)."""
    cfg = cfg or PDMSConfig()
    if executor is None or isinstance(executor, InlineExecutor):
        return score_plans(scenes, plans, cfg, references=references, failures=failures)
    if len(plans) != len(scenes):
        raise ValueError(f"score_plans: {len(scenes)} scenes but {len(plans)} plans; pass one plan per scene")
    if chunk_size < 1:
        raise ValueError(f"score_plans_parallel: chunk_size must be >= 1, got {chunk_size}")
    chunks: list[list[int]] = [[]]
    for group in linked_groups(scenes):
        if len(chunks[-1]) >= chunk_size:
            chunks.append([])
        chunks[-1].extend(group)
    chunks = [sorted(c) for c in chunks if c]
    tasks: list[Any] = []
    for chunk in chunks:
        refs = (
            None
            if references is None
            else {
                scenes[i].token: references[scenes[i].token] for i in chunk if scenes[i].token in references
            }
        )
        tasks.append(([scenes[i] for i in chunk], [np.asarray(plans[i]) for i in chunk], cfg, refs))
    position = {s.token: i for i, s in enumerate(scenes)}
    results = []
    failed: list[tuple[int, SceneFailure]] = []
    for outcome in executor.imap(_score_task, tasks):
        chunk = chunks[outcome.index]
        if outcome.value is None:
            reason = f"scoring task failed after {outcome.attempts} attempt(s): {outcome.error}"
            failed += [(i, SceneFailure(scenes[i].token, reason)) for i in chunk]
            continue
        results += outcome.value.scenes
        failed += [(position[f.token], f) for f in outcome.value.failures]
    results.sort(key=lambda r: position[r.token])
    failed.sort(key=lambda f: f[0])
    report = PDMSReport(
        results, [SceneFailure(t, r) for t, r in failures] + [f for _, f in failed], cfg.protocol
    )
    if cfg.protocol == PROTOCOL_V2:
        report.parents = {s.token: s.parent_token for s in scenes if s.parent_token}
        report.starts = {
            s.token: (float(s.ego_pose[0]), float(s.ego_pose[1])) for s in scenes if s.parent_token
        }
    return report
