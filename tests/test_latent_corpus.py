"""The LAM/teacher corpus: the students' train split plus extra stores, one collate, clashes refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivedistill.data.corpus import CorpusConfig, corpus_dataset, corpus_sizes
from drivedistill.data.store import SceneStore, SceneStoreWriter, write_shard
from drivedistill.testing import random_scene


def _store(root: Path, prefix: str, n: int, val_fraction: float) -> SceneStore:
    writer = SceneStoreWriter(root, {"world": {"seed": 0}}, num_shards=1, val_fraction=val_fraction)
    scenes = [
        random_scene(i, episode=f"{prefix}{i // 2}", token=f"{prefix}{i // 2}-{i % 2}") for i in range(n)
    ]
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=val_fraction, config_hash=writer.config_hash))
    writer.finish()
    return SceneStore(root)


def test_corpus_adds_every_extra_sample_and_collates_extras(tmp_path: Path) -> None:
    study = _store(tmp_path / "study", "a", 10, 0.3)
    extra = _store(tmp_path / "extra", "b", 6, 0.0)
    tokens = study.tokens("train") + extra.tokens(None)
    codes = {t: np.full(12, i % 16, np.int64) for i, t in enumerate(tokens)}
    data = corpus_dataset(study, [extra], extras={"latent/ego_codes": codes})
    assert len(data) == len(study.tokens("train")) + 6
    assert corpus_sizes(study, [extra]) == {
        "student_train": len(study.tokens("train")),
        "lam_teacher_train": len(data),
    }
    batch = data.collate([data[0], data[len(data) - 1]])
    assert batch.extras["latent/ego_codes"].shape == (2, 12)
    assert not set(extra.tokens(None)) & set(study.tokens("val"))  # the students' val split stays unseen


def test_corpus_refuses_a_store_that_repeats_tokens(tmp_path: Path) -> None:
    study = _store(tmp_path / "study", "a", 6, 0.0)
    again = _store(tmp_path / "again", "a", 4, 0.0)
    with pytest.raises(ValueError, match="seed_offset"):
        corpus_dataset(study, [again])
    with pytest.raises(ValueError, match="seed_offset"):
        CorpusConfig(extra_episodes=5, seed_offset=0)
