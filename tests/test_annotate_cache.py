"""Annotation cache: resume after an interruption, failures stored with raw text, the CLI on a real store."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from drivedistill.annotate.base import AnnotationResult
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store, main
from drivedistill.annotate.rules import RulesAnnotator, RulesConfig
from drivedistill.data.store import SceneStoreWriter, write_shard
from drivedistill.testing import random_scene
from drivedistill.types import Scene


class FakeSource:
    """A dict of scenes with the SceneStore reading interface."""

    def __init__(self, n: int) -> None:
        self.scenes = {f"t{i:03d}": random_scene(i, token=f"t{i:03d}") for i in range(n)}

    def tokens(self, split: str | None = None) -> list[str]:
        return list(self.scenes)

    def load(self, token: str, with_privileged: bool = True) -> Scene:
        return self.scenes[token]

    def sample_hash(self, token: str) -> str:
        return f"hash-{token}"


class CountingRules(RulesAnnotator):
    """Rules annotator that counts calls, crashes after `crash_after` samples, fails `bad` tokens."""

    def __init__(self, crash_after: int = -1, bad: tuple[str, ...] = ()) -> None:
        super().__init__(RulesConfig())
        self.calls, self.crash_after, self.bad = 0, crash_after, bad

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:
        if self.calls == self.crash_after:
            raise KeyboardInterrupt
        self.calls += 1
        if scene.token in self.bad:
            return AnnotationResult(
                scene.token, sample_hash, None, "Q1: not json", "answer contains no JSON object"
            )
        return super().annotate_one(scene, sample_hash)


def test_interrupted_run_resumes_without_repeating(tmp_path: Path) -> None:
    source = FakeSource(10)
    with pytest.raises(KeyboardInterrupt):
        annotate_store(source, CountingRules(crash_after=5), tmp_path, chunk_size=2)
    cache = AnnotationCache(tmp_path)
    key = RulesAnnotator(RulesConfig()).key()
    assert len(cache.read(key)) == 5  # two finished chunks, and the half chunk written on the interrupt
    again = CountingRules()
    summary = annotate_store(source, again, tmp_path, chunk_size=2)
    assert again.calls == 5 and (summary.done, summary.cached, summary.failed) == (5, 5, 0)
    assert len(cache.read(key)) == 10
    third = CountingRules()
    assert annotate_store(source, third, tmp_path).cached == 10 and third.calls == 0


def test_failures_are_stored_counted_and_retried(tmp_path: Path) -> None:
    source = FakeSource(6)
    summary = annotate_store(source, CountingRules(bad=("t001", "t004")), tmp_path, chunk_size=4)
    assert (summary.done, summary.failed) == (4, 2)
    cache = AnnotationCache(tmp_path)
    rows = cache.read(summary.key)
    assert rows["hash-t001"].annotation is None and rows["hash-t001"].raw == "Q1: not json"
    assert "no JSON" in rows["hash-t004"].error
    assert cache.counts(summary.key) == (4, 2)
    retry = CountingRules()
    summary = annotate_store(source, retry, tmp_path, retry_failed=True)
    assert retry.calls == 2 and cache.counts(summary.key) == (6, 0)  # later rows supersede failures
    shard = sorted((tmp_path / summary.key).glob("part-*.parquet"))[0]
    assert {"sample_hash", "annotator_key", "raw", "error"} <= set(pq.read_schema(shard).names)


def test_key_changes_with_output_relevant_config() -> None:
    assert RulesAnnotator(RulesConfig()).key() == RulesAnnotator(RulesConfig()).key()
    assert RulesAnnotator(RulesConfig(stop_speed=0.5)).key() != RulesAnnotator(RulesConfig()).key()


def _store(root: Path, n: int = 6) -> None:
    writer = SceneStoreWriter(root, {"world": {"seed": 0}}, num_shards=1, val_fraction=0.3)
    scenes = [random_scene(i, episode=f"ep{i // 2}", token=f"ep{i // 2}-{i % 2}") for i in range(n)]
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=0.3, config_hash=writer.config_hash))
    writer.finish()


def test_cli_annotates_a_store_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(tmp_path / "store")
    out = tmp_path / "ann"
    argv = ["--data", str(tmp_path / "store"), "--annotator", "rules", "--out", str(out), "--chunk-size", "2"]
    assert main([*argv, "--limit", "4"]) == 0
    assert "done 4 / cached 0 / failed 0" in capsys.readouterr().out
    assert main(argv) == 0
    assert "done 2 / cached 4 / failed 0" in capsys.readouterr().out
    assert main([*argv, "--annotator.stop_speed=0.5", "--limit", "1"]) == 0  # another key: not cached
    assert "done 1 / cached 0" in capsys.readouterr().out
    with pytest.raises(Exception, match="stop_sped"):
        main([*argv, "--annotator.stop_sped=0.5"])


def test_data_show_prints_the_annotation(tmp_path: Path) -> None:
    from drivedistill.annotate.cache import annotation_lines

    _store(tmp_path / "store")
    main(["--data", str(tmp_path / "store"), "--annotator", "rules"])  # default out: store_annotations
    from drivedistill.data.store import SceneStore

    store = SceneStore(tmp_path / "store")
    lines = annotation_lines(tmp_path / "store_annotations", store.sample_hash(store.tokens()[0]))
    assert (
        lines[0].startswith("VLM-AD [rules ") and "control: " in lines[0] and lines[3].startswith("  why: ")
    )
    assert annotation_lines(tmp_path / "missing", "x") == []
