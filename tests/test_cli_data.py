"""`drivedistill data validate|show|stats` on a synthetic store, and `drivedistill collect` on the world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivedistill.cli import main as cli
from drivedistill.config import to_dict
from drivedistill.data.store import SceneStore, SceneStoreWriter, shard_name, write_shard
from drivedistill.testing import random_scene
from drivedistill.world.bev import BevConfig
from drivedistill.world.camera import CameraConfig
from drivedistill.world.config import WorldConfig


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    world = WorldConfig(
        camera=CameraConfig(height=64, width=128), bev=BevConfig(height=64, width=64, resolution=1.0)
    )
    writer = SceneStoreWriter(tmp_path, {"world": to_dict(world)}, num_shards=2)
    for k in range(2):
        scenes = [
            random_scene(10 * k + i, bev_channels=2, episode=f"ep{k}", token=f"ep{k}-{i}") for i in range(3)
        ]
        writer.add_shard(write_shard(tmp_path, k, scenes, val_fraction=0.2, config_hash=writer.config_hash))
    writer.finish()
    return tmp_path


def test_validate_ok_then_names_corrupt_shard(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["data", "validate", str(store_dir), "--deep"]) == 0
    assert "valid" in capsys.readouterr().out
    (store_dir / shard_name(1)).write_bytes(b"garbage")
    assert cli(["data", "validate", str(store_dir)]) == 1
    err = capsys.readouterr().err
    assert shard_name(1) in err and shard_name(0) not in err
    assert cli(["data", "validate", str(store_dir / "nothing")]) == 1


def test_show_writes_a_non_blank_png(store_dir: Path, tmp_path: Path) -> None:
    """Camera (64 × 128 shown ×4), the LiDAR BEV and the labelled BEV (64 px shown ×4) side by side, the
    future trajectory in magenta on both BEVs, the LiDAR in its histogram colours (world/lidar.py)."""
    from drivedistill.data.cli import PANEL_GAP
    from drivedistill.world.lidar import lidar_rgb

    out = tmp_path / "show" / "x.png"
    assert cli(["data", "show", str(store_dir), "--index", "4", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 256 and img.shape[1] == 512 + 2 * (PANEL_GAP + 256) and img.std() > 10
    lidar = img[:256, 512 + PANEL_GAP : 512 + PANEL_GAP + 256]
    labelled = img[:256, 512 + 2 * PANEL_GAP + 256 :]
    magenta = (img[:, :, 0] > 200) & (img[:, :, 1] < 80) & (img[:, :, 2] > 150)
    assert magenta[:256, 512 + PANEL_GAP : 512 + PANEL_GAP + 256].sum() > 10
    assert magenta[:256, 512 + 2 * PANEL_GAP + 256 :].sum() > 10
    store = SceneStore(store_dir)
    scene = store.load(store.tokens()[4])
    assert scene.privileged is not None and scene.privileged.labelled_bev is not None
    # bottom-right quarter (no title, no ego path): the panels show the stored rasters, upscaled ×4
    assert np.array_equal(lidar[200::4, 200::4], lidar_rgb(scene.agent_input.bev)[50:, 50:])
    assert not np.array_equal(labelled[200::4, 200::4], lidar[200::4, 200::4])
    assert cli(["data", "show", str(store_dir), "--index", "99", "--out", str(out)]) == 1


def test_stats_prints_counts(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["data", "stats", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "6 samples" in out
        and "samples per scenario" in out
        and "highway" in out
        and "samples per command" in out
    )


TINY = ["--preset", "smoke", "--world.episode_seconds=7", "--episodes-per-shard", "1", "--no-progress"]


@pytest.mark.slow
def test_collect_pool_then_resume_rewrites_only_bad_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    assert cli(["collect", *TINY, "--world.num_episodes=3", "--out", str(out), "--workers", "2"]) == 0
    assert "expert collision-free rate" in capsys.readouterr().out
    store = SceneStore(out)
    assert len(store) > 0 and store.validate(deep=True) == []
    assert store.config["world"]["num_episodes"] == 3 and store.config["collect"]["episodes_per_shard"] == 1
    before = {k: (out / shard_name(k)).stat().st_mtime_ns for k in range(3)}
    hashes = {t: store.sample_hash(t) for t in store.tokens()}
    (out / shard_name(1)).write_bytes((out / shard_name(1)).read_bytes()[:100])  # a torn shard
    (out / shard_name(2)).unlink()
    assert cli(["data", "validate", str(out)]) == 1
    assert cli(["collect", *TINY, "--world.num_episodes=3", "--out", str(out)]) == 0
    assert (out / shard_name(0)).stat().st_mtime_ns == before[0]
    assert (out / shard_name(1)).stat().st_mtime_ns != before[1]
    resumed = SceneStore(out)
    assert resumed.validate() == [] and {t: resumed.sample_hash(t) for t in resumed.tokens()} == hashes
    assert cli(["collect", *TINY, "--world.num_episodes=4", "--out", str(out)]) == 1  # another config
