"""SceneStore integrity: corrupt / missing shards are named, other shards still load; resume keeps
complete shards untouched and adopts a shard written before the manifest was updated."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from drivedistill.data.store import SceneStore, SceneStoreWriter, StoreError, shard_name, write_shard
from drivedistill.testing import random_scene
from drivedistill.types import Scene

CONFIG = {"world": {"seed": 1}}


def _shard_scenes(k: int) -> list[Scene]:
    return [random_scene(10 * k + i, episode=f"ep{k}", token=f"ep{k}-{i}") for i in range(4)]


def _write_all(root: Path, num_shards: int = 3) -> SceneStoreWriter:
    writer = SceneStoreWriter(root, CONFIG, num_shards=num_shards)
    for k in range(num_shards):
        writer.add_shard(
            write_shard(root, k, _shard_scenes(k), val_fraction=0.2, config_hash=writer.config_hash)
        )
    writer.finish()
    return writer


def test_truncated_shard_is_named_and_others_load(tmp_path: Path) -> None:
    _write_all(tmp_path)
    bad = tmp_path / shard_name(1)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    store = SceneStore(tmp_path)
    problems = store.validate()
    assert len(problems) == 1 and shard_name(1) in problems[0] and "truncated" in problems[0]
    with pytest.raises(StoreError, match=shard_name(1)):
        store.load("ep1-0")
    assert store.load("ep0-0").token == "ep0-0" and store.load("ep2-3").token == "ep2-3"


def test_bitflip_and_missing_shards_are_named(tmp_path: Path) -> None:
    _write_all(tmp_path)
    data = bytearray((tmp_path / shard_name(0)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / shard_name(0)).write_bytes(bytes(data))
    (tmp_path / shard_name(2)).unlink()
    problems = SceneStore(tmp_path).validate()
    assert len(problems) == 2
    assert shard_name(0) in problems[0] and "sha256" in problems[0]
    assert shard_name(2) in problems[1] and "missing" in problems[1]
    with pytest.raises(StoreError, match="corrupt"):
        SceneStore(tmp_path).load("ep0-1")
    assert SceneStore(tmp_path).load("ep1-1").token == "ep1-1"


def test_resume_keeps_complete_shards_and_adopts_unrecorded(tmp_path: Path) -> None:
    writer = SceneStoreWriter(tmp_path, CONFIG, num_shards=4)
    for k in range(2):
        writer.add_shard(
            write_shard(tmp_path, k, _shard_scenes(k), val_fraction=0.2, config_hash=writer.config_hash)
        )
    # shard 2 written but the process died before the manifest update; shard 3 left torn
    write_shard(tmp_path, 2, _shard_scenes(2), val_fraction=0.2, config_hash=writer.config_hash)
    (tmp_path / shard_name(3)).write_bytes(b"PAR1 torn")
    mtimes = {k: os.stat(tmp_path / shard_name(k)).st_mtime_ns for k in range(3)}
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    assert any("incomplete" in p for p in SceneStore(tmp_path).validate())

    resumed = SceneStoreWriter(tmp_path, CONFIG, num_shards=4)
    assert resumed.completed() == {0, 1, 2}
    resumed.add_shard(
        write_shard(tmp_path, 3, _shard_scenes(3), val_fraction=0.2, config_hash=resumed.config_hash)
    )
    resumed.finish()
    assert {k: os.stat(tmp_path / shard_name(k)).st_mtime_ns for k in range(3)} == mtimes
    store = SceneStore(tmp_path)
    assert store.validate(deep=True) == [] and len(store) == 16


def test_resume_with_another_config_fails(tmp_path: Path) -> None:
    _write_all(tmp_path, num_shards=1)
    with pytest.raises(StoreError, match="different config"):
        SceneStoreWriter(tmp_path, {"world": {"seed": 2}}, num_shards=1)
    with pytest.raises(StoreError, match=r"manifest\.json does not exist"):
        SceneStore(tmp_path / "elsewhere")
