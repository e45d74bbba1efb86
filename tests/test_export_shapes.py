"""`drivedistill export` takes its input shapes from the data or the student's config, never a stale
constant: the default is the world's 2-channel LiDAR BEV, a store's first sample wins over meta.json, and
a BEV channel count the student was not built for is refused before exporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivedistill import registry
from drivedistill.cli import main as cli
from drivedistill.data.store import SceneStoreWriter, write_shard
from drivedistill.testing import random_scene
from drivedistill.train.export import default_shapes, example_inputs, resolve_shapes
from drivedistill.world.config import WorldConfig
from drivedistill.world.lidar import LIDAR_CHANNELS


def _student(bev_channels: int):  # type: ignore[no-untyped-def]
    entry = registry.get("student", "transfuser")
    cfg = entry.default_config()
    cfg.bev_channels, cfg.hidden_dim, cfg.num_heads = bev_channels, 32, 2
    return entry.builder(cfg)


def test_default_shapes_are_the_worlds_sensors() -> None:
    world = WorldConfig()
    shapes = default_shapes()
    assert shapes["bev"] == [world.bev.height, world.bev.width, len(LIDAR_CHANNELS)] == [128, 128, 2]
    assert shapes["camera"] == [world.camera.height, world.camera.width, 3]
    assert default_shapes(3)["bev"][2] == 3
    # a checkpoint without input_shapes in meta.json: the student's channels, the world's sizes
    assert resolve_shapes(_student(2), {})["bev"] == [128, 128, 2]
    assert example_inputs(2, resolve_shapes(_student(2), {}))[1].shape == (2, 2, 128, 128)


def test_store_shapes_win_and_a_channel_mismatch_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    scenes = [random_scene(i, camera_hw=(32, 64), bev_hw=(32, 32), bev_channels=2) for i in range(2)]
    writer = SceneStoreWriter(root, {"test": "export_shapes"}, num_shards=1, val_fraction=0.0)
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=0.0, config_hash=writer.config_hash))
    writer.finish()
    meta = {"input_shapes": {"camera": [64, 128, 3], "bev": [64, 64, 2]}}
    assert resolve_shapes(_student(2), meta)["bev"] == [64, 64, 2]
    shapes = resolve_shapes(_student(2), meta, store=root)
    assert shapes == {"camera": [32, 64, 3], "bev": [32, 32, 2]}
    assert resolve_shapes(_student(2), meta, bev=[16, 16, 2])["bev"] == [16, 16, 2]
    with pytest.raises(ValueError, match="built for 3 BEV channels.*--bev-shape H W 3"):
        resolve_shapes(_student(3), meta)


def test_export_cli_refuses_a_bev_shape_the_student_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    scenes = [random_scene(i, camera_hw=(32, 64), bev_hw=(32, 32), bev_channels=2) for i in range(4)]
    writer = SceneStoreWriter(root, {"test": "export_shapes"}, num_shards=1, val_fraction=0.0)
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=0.0, config_hash=writer.config_hash))
    writer.finish()
    run = tmp_path / "run"
    args = ["--train.epochs=1", "--train.batch_size=4", "--train.progress=false", "--student.hidden_dim=32",
            "--student.num_heads=2"]  # fmt: skip
    assert cli(["train", "--student", "transfuser", "--data", str(root), "--out", str(run), *args]) == 0
    assert cli(["export", "--checkpoint", str(run), "--bev-shape", "32", "32", "3"]) == 2
    assert "built for 2 BEV channels" in capsys.readouterr().err
