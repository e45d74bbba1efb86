"""StageRunner: content-keyed stages, skipping finished ones, and the dry run that plans without running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivedistill.pipeline.cache import Artifact, StageRunner


def _chain(runner: StageRunner, knob: int, calls: list[str]) -> tuple[Artifact, Artifact]:
    """Two stages, the second reading the first."""

    def make(name: str) -> Any:
        def fn(d: Path) -> dict[str, Any]:
            calls.append(name)
            (d / "out.txt").write_text(name)
            return {"name": name}

        return fn

    up = runner.run("upstream", {"knob": knob}, [], make("upstream"))
    down = runner.run("downstream", {"fixed": 1}, [up], make("downstream"))
    return up, down


def test_finished_stages_skip_and_a_changed_knob_reruns_downstream(tmp_path: Path) -> None:
    calls: list[str] = []
    _chain(StageRunner(tmp_path, log=lambda _: None), 1, calls)
    _chain(StageRunner(tmp_path, log=lambda _: None), 1, calls)
    assert calls == ["upstream", "downstream"]
    _, down = _chain(StageRunner(tmp_path, log=lambda _: None), 2, calls)
    assert calls[2:] == ["upstream", "downstream"] and not down.cached


def test_dry_run_lists_what_would_run_and_runs_nothing(tmp_path: Path) -> None:
    calls: list[str] = []
    fresh = StageRunner(tmp_path / "empty", log=lambda _: None, dry_run=True)
    _chain(fresh, 1, calls)
    assert calls == [] and not (tmp_path / "empty").exists()  # a dry run writes nothing
    assert fresh.planned == {"upstream": None, "downstream": None}  # never ran here: no estimate

    _chain(StageRunner(tmp_path, log=lambda _: None), 1, calls)
    same = StageRunner(tmp_path, log=lambda _: None, dry_run=True)
    _chain(same, 1, calls)
    assert same.planned == {} and set(same.recorded) == {"upstream", "downstream"}

    changed = StageRunner(tmp_path, log=lambda _: None, dry_run=True)
    _chain(changed, 2, calls)
    assert calls == ["upstream", "downstream"]  # only the real run ran anything
    # both would run (the downstream key follows the upstream's), estimated from their earlier runs
    assert set(changed.planned) == {"upstream", "downstream"}
    assert all(s is not None and s >= 0.0 for s in changed.planned.values())


def test_previous_seconds_does_not_mix_up_stage_names_that_share_a_prefix(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path, log=lambda _: None)
    runner.run("train-tf-noego-s0", {}, [], lambda d: {})
    assert runner.previous_seconds("train-tf-noego-s0") is not None
    assert runner.previous_seconds("train-tf") is None  # `train-tf-noego-s0-<key>` is another stage
