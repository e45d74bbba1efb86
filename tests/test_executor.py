"""Executors (#20 pt 4): in-process, local process pool, Ray — same outputs in the same order, failing
tasks retried and reported; annotation through each writes byte-identical cache shards."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import AnnotatorSpec, annotate_store
from drivedistill.annotate.rules import RulesAnnotator, RulesConfig
from drivedistill.executor import (
    ExecutorConfig,
    InlineExecutor,
    LocalExecutor,
    TaskFailures,
    make_executor,
)
from drivedistill.testing import random_scene
from drivedistill.types import Scene

ROOT = Path(__file__).resolve().parents[1]


def square_flaky(item: tuple[str, int]) -> int:
    """i² — but the first attempt of every odd i raises (a marker file remembers it across processes);
    i = 7 always raises."""
    folder, i = item
    if i == 7:
        raise ValueError(f"item {i} is broken")
    marker = Path(folder) / f"tried-{i}"
    if i % 2 and not marker.exists():
        marker.write_text("x")
        raise ConnectionError(f"transient failure of {i}")
    return i * i


def die_once(item: tuple[str, int]) -> int:
    """The worker process dies (no exception, no result) the first time item 1 runs."""
    folder, i = item
    marker = Path(folder) / f"died-{i}"
    if i == 1 and not marker.exists():
        marker.write_text("x")
        os._exit(3)
    return i


def _check_executor(cfg: ExecutorConfig, tmp: Path) -> None:
    items = [(str(tmp), i) for i in range(10)]
    with make_executor(cfg) as ex:
        outcomes = list(ex.imap(square_flaky, items))
        assert [o.index for o in outcomes] == list(range(10))
        assert [o.value for o in outcomes if o.ok] == [i * i for i in range(10) if i != 7]
        broken = outcomes[7]
        assert not broken.ok and "ValueError: item 7 is broken" in broken.error
        assert broken.attempts == cfg.retries + 1
        assert [o.attempts for o in outcomes if o.index % 2 and o.index != 7] == [2, 2, 2, 2]
        assert ex.retried == 4 + cfg.retries  # one per odd item + every retry of item 7
        assert ex.map(square_flaky, [(str(tmp), 3), (str(tmp), 4)]) == [9, 16]  # 3's marker exists now
        with pytest.raises(
            TaskFailures, match=rf"1 task\(s\) failed:\n  item 1 after {cfg.retries + 1} attempt"
        ):
            ex.map(square_flaky, [(str(tmp), 2), (str(tmp), 7)], what="squares")


def test_inline_and_process_pool_retry_and_report(tmp_path: Path) -> None:
    inline = ExecutorConfig(workers=1, retries=1)
    assert isinstance(make_executor(inline), InlineExecutor)
    (tmp_path / "a").mkdir()
    _check_executor(inline, tmp_path / "a")
    pool = ExecutorConfig(workers=2, retries=2)
    (tmp_path / "b").mkdir()
    with make_executor(pool) as ex:
        assert isinstance(ex, LocalExecutor)
    _check_executor(pool, tmp_path / "b")
    with make_executor(pool) as ex:  # a dead worker breaks the pool: it is rebuilt and the tasks retried
        outcomes = list(ex.imap(die_once, [(str(tmp_path), i) for i in range(4)]))
    assert [o.value for o in outcomes] == [0, 1, 2, 3] and outcomes[1].attempts >= 2


def test_bad_executor_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'spark' is unknown"):
        ExecutorConfig(kind="spark")
    with pytest.raises(ValueError, match="workers >= 1"):
        ExecutorConfig(kind="local", workers=0)


class Scenes:
    """A picklable scene source (the workers rebuild the scenes from seeds)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def tokens(self, split: str | None = None) -> list[str]:
        return [f"t{i:03d}" for i in range(self.n)]

    def load(self, token: str, with_privileged: bool = True) -> Scene:
        return random_scene(int(token[1:]), token=token)

    def sample_hash(self, token: str) -> str:
        return f"hash-{token}"


class CrashingRules(RulesAnnotator):
    """Rules annotator whose process dies... as an exception, on every sample `bad`."""

    def __init__(self, bad: str) -> None:
        super().__init__(RulesConfig())
        self.bad = bad

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:
        if scene.token == self.bad:
            raise RuntimeError(f"annotator crashed on {scene.token}")
        return super().annotate_one(scene, sample_hash)


class CrashingSpec:
    def __init__(self, bad: str) -> None:
        self.bad = bad

    def __call__(self) -> Annotator:
        return CrashingRules(self.bad)


def _shards(root: Path, key: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((root / key).glob("part-*.parquet"))]


def _annotate_and_compare(cfg: ExecutorConfig, tmp: Path) -> None:
    source = Scenes(9)
    reference = annotate_store(source, RulesAnnotator(RulesConfig()), tmp / "inline", chunk_size=4)
    with make_executor(cfg) as ex:
        summary = annotate_store(
            source,
            RulesAnnotator(RulesConfig()),
            tmp / cfg.kind,
            chunk_size=4,
            executor=ex,
            make_annotator=AnnotatorSpec("rules"),
        )
    assert (summary.done, summary.failed, summary.key) == (9, 0, reference.key)
    assert _shards(tmp / cfg.kind, summary.key) == _shards(tmp / "inline", reference.key)  # byte-identical
    assert len(_shards(tmp / "inline", reference.key)) == 3
    # a chunk whose task keeps failing is stored as failures (not dropped) and re-asked by retry_failed
    with make_executor(cfg) as ex:
        crashed = annotate_store(
            Scenes(10),
            CrashingRules("t009"),
            tmp / cfg.kind,
            chunk_size=4,
            executor=ex,
            make_annotator=CrashingSpec("t009"),
        )
        assert (crashed.done, crashed.failed, crashed.cached) == (0, 1, 9)
        assert crashed.stats["task_retries"] == cfg.retries
    rows = AnnotationCache(tmp / cfg.kind).read(summary.key)
    assert f"after {cfg.retries + 1} attempt(s)" in rows["hash-t009"].error
    assert "annotator crashed on t009" in rows["hash-t009"].error
    with make_executor(cfg) as ex:
        again = annotate_store(
            Scenes(10),
            RulesAnnotator(RulesConfig()),
            tmp / cfg.kind,
            retry_failed=True,
            executor=ex,
            make_annotator=AnnotatorSpec("rules"),
        )
    assert (again.done, again.failed, again.cached) == (1, 0, 9)


def test_annotation_through_a_process_pool_is_byte_identical(tmp_path: Path) -> None:
    _annotate_and_compare(ExecutorConfig(workers=2, retries=1), tmp_path)


def _collect_and_compare(cfg: ExecutorConfig, tmp: Path) -> None:
    """Two 6 s highway episodes, one shard each: the executor's shards are byte-identical to in-process."""
    from drivedistill.world.collect import collect, resolve_world_config

    overrides = ["--world.num_episodes=2", "--world.episode_seconds=6", "--world.scenarios=[highway]"]
    world = resolve_world_config("smoke", None, overrides)
    ref = collect(world, tmp / "inline", episodes_per_shard=1, show_progress=False)
    with make_executor(cfg) as ex:
        got = collect(world, tmp / cfg.kind, episodes_per_shard=1, show_progress=False, executor=ex)
    assert got["shards"] == ref["shards"] and got["stats"] == ref["stats"]
    shards = sorted(p.name for p in (tmp / "inline").glob("shard-*.parquet"))
    assert len(shards) == 2
    for name in shards:
        assert (tmp / cfg.kind / name).read_bytes() == (tmp / "inline" / name).read_bytes()


@pytest.mark.slow
def test_collection_through_a_process_pool_is_byte_identical(tmp_path: Path) -> None:
    _collect_and_compare(ExecutorConfig(workers=2), tmp_path)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # workers import tests.*
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_executor_retries_reports_and_matches_local(local_ray: Any, tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    _check_executor(ExecutorConfig(kind="ray", retries=2), tmp_path / "core")
    with make_executor(ExecutorConfig(kind="ray", retries=2)) as ex:  # a worker process dies: retried
        outcomes = list(ex.imap(die_once, [(str(tmp_path), i) for i in range(4)]))
    assert [o.value for o in outcomes] == [0, 1, 2, 3] and outcomes[1].attempts == 2
    _annotate_and_compare(ExecutorConfig(kind="ray", retries=1), tmp_path)
    _collect_and_compare(ExecutorConfig(kind="ray"), tmp_path / "collect")
    # PDMS (NAVSIM v2, with extended-comfort and two-stage links) through Ray: the same report JSON
    from drivedistill.metrics.parallel import score_plans_parallel
    from drivedistill.metrics.pdms import PDMSConfig, score_plans
    from tests.test_metrics_parallel import scenes_and_plans

    scenes, plans = scenes_and_plans()
    cfg = PDMSConfig(protocol="navsim-v2")
    with make_executor(ExecutorConfig(kind="ray")) as ex:
        got = score_plans_parallel(scenes, plans, cfg, ex, chunk_size=2).to_json()
    assert json.dumps(got) == json.dumps(score_plans(scenes, plans, cfg).to_json())


def test_annotate_cli_with_a_process_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`drivedistill annotate --workers 2`: the workers open the store and build the annotator from its
    spec; the shards equal the in-process run's."""
    from drivedistill.annotate.cli import main
    from tests.test_annotate_cache import _store

    _store(tmp_path / "store")
    argv = ["--data", str(tmp_path / "store"), "--annotator", "rules", "--chunk-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "inline")]) == 0
    assert main([*argv, "--out", str(tmp_path / "pool"), "--executor", "local", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("done 6 / cached 0 / failed 0") == 2
    key = AnnotationCache(tmp_path / "inline").annotator_keys()
    assert key == AnnotationCache(tmp_path / "pool").annotator_keys() and len(key) == 1
    assert _shards(tmp_path / "pool", key[0]) == _shards(tmp_path / "inline", key[0])
    with pytest.raises(SystemExit):
        main([*argv, "--executor", "local", "--workers", "0"])
