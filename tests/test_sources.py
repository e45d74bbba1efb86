"""The one Source interface: every registered source implements it; the world's scenes and metric scenes
come from the same simulated records."""

from __future__ import annotations

import inspect

import numpy as np

from drivedistill import registry
from drivedistill.data.sources.base import PRIVILEGED, SENSORS, Source
from drivedistill.world.collect import resolve_world_config


def test_every_registered_source_implements_the_interface() -> None:
    entries = registry.entries("source")
    assert {"world", "av2", "av2_forecasting", "nuscenes"} <= {e.name for e in entries}
    for e in entries:
        cls = inspect.signature(e.builder).return_annotation
        source_cls = getattr(inspect.getmodule(e.builder), str(cls))
        assert issubclass(source_cls, Source), e.name
        assert source_cls.name == e.name and set(source_cls.sensors) <= set(SENSORS)


def test_world_scenes_and_metric_scenes_share_records() -> None:
    world = resolve_world_config("smoke", None, ["--world.num_episodes=1"])
    source = registry.build("source", "world", world)
    assert isinstance(source, Source) and source.episodes() == ["0"]
    records = source.load("0")
    scenes, metric = source.scenes_of(records), source.metric_scenes_of(records)
    assert len(scenes) == len(metric) > 0
    for s, m in zip(scenes, metric):
        assert s.token == m.token
        assert np.allclose(m.ego_dynamics[[0, 1, 3]], s.agent_input.ego_status, atol=1e-5)
    assert source.store_config()["world"]["num_episodes"] == 1


def test_every_source_gives_students_the_worlds_lidar_histogram_and_keeps_labels_privileged() -> None:
    """One BEV representation for every source: (H, W, 2) uint8 height histogram on the BevConfig grid
    (world: ray-cast; nuScenes: the real sweep; AV2 excerpts: no sweep → zeros listed in meta["absent"]),
    and the labelled raster (map, boxes) only in Privileged.labelled_bev, never in the AgentInput."""
    import dataclasses
    from pathlib import Path

    from drivedistill.types import AgentInput
    from drivedistill.world.lidar import LIDAR_CHANNELS
    from tests.nuscenes_fixture import write_keyframe_dataset

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    world = resolve_world_config("smoke", None, ["--world.num_episodes=1"])
    built: list[tuple[Source, list[str], object]] = [
        (registry.build("source", "world", world), ["0"], world.bev)
    ]
    if (data / "argoverse2").is_dir():
        from drivedistill.data.sources.av2 import Av2Config

        log = "adcf7d18-0510-35b0-a2fa-b4cea13a6d76"
        cfg = Av2Config(root=str(data / "argoverse2"), logs=[log])
        built.append((registry.build("source", "av2", cfg), [log], cfg.bev))
    if (data / "nuscenes_keyframe").is_dir():
        import tempfile

        from drivedistill.data.sources.nuscenes import NuScenesConfig

        root = write_keyframe_dataset(data / "nuscenes_keyframe", Path(tempfile.mkdtemp()))
        ncfg = NuScenesConfig(root=str(root))
        built.append((registry.build("source", "nuscenes", ncfg), ["scene-0061"], ncfg.bev))
    for source, episodes, bev in built:
        assert set(source.sensors) <= set(SENSORS) and set(source.privileged) <= set(PRIVILEGED)
        scene = source.scenes_of(source.load(episodes[0]))[0]
        ai, pv = scene.agent_input, scene.privileged
        assert ai.bev.shape == (bev.height, bev.width, len(LIDAR_CHANNELS)) and ai.bev.dtype == np.uint8  # type: ignore[attr-defined]
        absent = "lidar_bev" in scene.meta.get("absent", [])
        assert absent == ("lidar_bev" not in source.sensors), source.name
        assert ai.bev.any() != absent, source.name  # a sensor it has returns something; an absent one is zero
        assert pv is not None and pv.labelled_bev is not None, source.name
        assert pv.labelled_bev.shape == (*ai.bev.shape[:2], 3) and pv.labelled_bev.any(), source.name
        for f in dataclasses.fields(AgentInput):
            value = getattr(ai, f.name)
            if isinstance(value, np.ndarray):
                assert not np.shares_memory(value, pv.labelled_bev), (source.name, f.name)
                assert not np.array_equal(value, pv.labelled_bev), (source.name, f.name)
