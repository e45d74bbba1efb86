"""The one Source interface: every registered source implements it; the world's scenes and metric scenes
come from the same simulated records."""

from __future__ import annotations

import inspect

import numpy as np

from drivedistill import registry
from drivedistill.data.sources.base import SENSORS, Source
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
