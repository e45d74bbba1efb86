"""SceneStore: write → read round trip, manifest hashes, splits by episode, Dataset/collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivedistill.data.dataset import SceneDataset, collate
from drivedistill.data.schema import scene_hash
from drivedistill.data.store import SceneStore, SceneStoreWriter, StoreError, split_for_episode, write_shard
from drivedistill.testing import random_scene
from drivedistill.types import Scene, ValidationError
from drivedistill.utils.io import sha256_file


def _scenes(num_episodes: int = 6, per_episode: int = 3) -> list[Scene]:
    out = []
    for e in range(num_episodes):
        for f in range(per_episode):
            s = random_scene(
                100 * e + f, num_agents=2 + e % 3, episode=f"ep{e:03d}", token=f"ep{e:03d}-{f:03d}"
            )
            s.meta = {"scenario": "highway", "event": "lead_brake" if f == 0 else None}
            out.append(s)
    out[1] = out[1].without_privileged()  # a sample without privileged part must survive too
    return out


def _write(
    root: Path, scenes: list[Scene], num_shards: int = 2, val_fraction: float = 0.3
) -> SceneStoreWriter:
    writer = SceneStoreWriter(root, {"world": {"seed": 0}}, num_shards=num_shards, val_fraction=val_fraction)
    per = -(-len(scenes) // num_shards)
    for k in range(num_shards):
        part = scenes[k * per : (k + 1) * per]
        eps = {s.episode: {"collided": s.episode == "ep000"} for s in part}
        writer.add_shard(
            write_shard(
                root, k, part, val_fraction=val_fraction, config_hash=writer.config_hash, episodes=eps
            )
        )
    writer.finish()
    return writer


def _assert_same(a: Scene, b: Scene) -> None:
    assert (a.token, a.episode, a.frame_index, a.meta) == (b.token, b.episode, b.frame_index, b.meta)
    for name in ("camera", "bev", "ego_history", "ego_status"):
        x, y = getattr(a.agent_input, name), getattr(b.agent_input, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.agent_input.command == b.agent_input.command
    assert (a.privileged is None) == (b.privileged is None)
    if a.privileged is not None and b.privileged is not None:
        pa_, pb = a.privileged, b.privileged
        for name in (
            "future_trajectory",
            "future_valid",
            "future_frames",
            "future_ego_status",
            "agents",
            "agents_valid",
        ):
            assert np.array_equal(getattr(pa_, name), getattr(pb, name)), name
        for name in ("lanes", "lane_polygons", "drivable_polygons", "intersection_polygons"):
            assert len(getattr(pa_.map, name)) == len(getattr(pb.map, name))
            for p, q in zip(getattr(pa_.map, name), getattr(pb.map, name)):
                assert np.array_equal(p, q), name
        assert np.array_equal(pa_.map.lane_on_route, pb.map.lane_on_route)
        assert np.array_equal(pa_.map.route, pb.map.route)
        assert pa_.scenario == pb.scenario


def test_round_trip_is_exact(tmp_path: Path) -> None:
    scenes = _scenes()
    _write(tmp_path, scenes)
    store = SceneStore(tmp_path)
    assert len(store) == len(scenes)
    for s in scenes:
        _assert_same(s, store.load(s.token))
        assert store.sample_hash(s.token) == scene_hash(s)
    assert store.load(scenes[0].token, with_privileged=False).privileged is None
    assert store.validate(deep=True) == []
    with pytest.raises(StoreError, match="not in the store"):
        store.load("nope")


def test_manifest_hashes_counts_and_stats(tmp_path: Path) -> None:
    scenes = _scenes()
    _write(tmp_path, scenes)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"] == {"world": {"seed": 0}}
    for sh in manifest["shards"]:
        assert sha256_file(tmp_path / sh["file"]) == sh["sha256"]
        assert sum(1 for _ in sh["samples"]) == sh["num_rows"]
    stats = manifest["stats"]
    assert stats["num_samples"] == len(scenes) and stats["num_episodes"] == 6
    assert stats["expert_collision_free_rate"] == pytest.approx(5 / 6)
    assert stats["samples_per"]["event"] == {"lead_brake": 6, "none": 12}
    # a changed sample changes its hash
    other = random_scene(1)
    other.agent_input.camera[0, 0, 0] ^= 1
    assert scene_hash(other) != scene_hash(random_scene(1))


def test_splits_are_disjoint_by_episode(tmp_path: Path) -> None:
    scenes = [random_scene(i, episode=f"e{i // 2}") for i in range(80)]
    _write(tmp_path, scenes, num_shards=3, val_fraction=0.25)
    store = SceneStore(tmp_path)
    train, val = store.tokens("train"), store.tokens("val")
    assert train and val and set(train).isdisjoint(val) and len(train) + len(val) == len(store)
    ep = {s.token: s.episode for s in scenes}
    assert {ep[t] for t in train}.isdisjoint({ep[t] for t in val})
    assert all(store.split_of(t) == split_for_episode(ep[t], 0.25) for t in train + val)


def test_readable_with_pandas_alone(tmp_path: Path) -> None:
    _write(tmp_path, _scenes())
    df = pd.read_parquet(
        tmp_path / "shard-00000.parquet", columns=["token", "split", "ego_history", "ego_history_shape"]
    )
    row = df.iloc[0]
    assert np.asarray(row.ego_history, np.float32).reshape(row.ego_history_shape).shape == (4, 3)


def test_dataset_collate_and_extras(tmp_path: Path) -> None:
    scenes = [s for s in _scenes() if s.privileged is not None]
    _write(tmp_path, scenes)
    store = SceneStore(tmp_path)
    tokens = store.tokens("train")
    codes = {t: np.full(8, i, np.int64) for i, t in enumerate(tokens)}
    ds = SceneDataset(store, "train", extras={"latent/ego_codes": codes}, cache_decoded=True)
    batch = ds.collate([ds[0], ds[1]])
    assert batch.tokens == tokens[:2] and batch.privileged is not None
    assert batch.inputs.camera.shape == (2, 3, 64, 128) and float(batch.inputs.camera.max()) <= 1.0
    assert batch.extras["latent/ego_codes"].tolist() == [[0] * 8, [1] * 8]
    assert ds[0] is ds[0]  # cached
    assert SceneDataset(store, "train", with_privileged=False)[0].privileged is None
    with pytest.raises(StoreError, match="latent/ego_codes"):
        SceneDataset(store, "train", extras={"latent/ego_codes": {tokens[0]: codes[tokens[0]]}})
    with pytest.raises(ValidationError, match=tokens[1]):
        collate([ds[0], ds[1]], {"x": {tokens[0]: np.zeros(2)}})
    mixed = collate([ds[0], ds[1].without_privileged()])
    assert mixed.privileged is None


def test_explicit_episode_split_overrides_the_hash(tmp_path: Path) -> None:
    scenes = [random_scene(i, episode=f"e{i // 2}") for i in range(20)]
    hashed = {s.episode: split_for_episode(s.episode, 0.25) for s in scenes}
    flipped = {e: {"split": "train" if sp == "val" else "val"} for e, sp in hashed.items()}
    writer = SceneStoreWriter(tmp_path, {"world": {"seed": 0}}, num_shards=1, val_fraction=0.25)
    writer.add_shard(
        write_shard(tmp_path, 0, scenes, val_fraction=0.25, config_hash=writer.config_hash, episodes=flipped)
    )
    writer.finish()
    store = SceneStore(tmp_path)
    assert all(store.split_of(s.token) == flipped[s.episode]["split"] for s in scenes)
    with pytest.raises(StoreError, match="split 'test'"):
        write_shard(
            tmp_path / "bad",
            0,
            scenes[:2],
            val_fraction=0.25,
            config_hash="x",
            episodes={scenes[0].episode: {"split": "test"}},
        )
