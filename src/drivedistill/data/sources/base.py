"""The one `Source` interface every data source implements (world, Argoverse 2, nuScenes).

A source is a list of **episodes** (a simulated episode, an AV2 log, a nuScenes scene). `load(episode)`
parses an episode's records once; from those same records `scenes_of` builds the training `Scene`s and
`metric_scenes_of` the scoring `MetricScene`s, so a scene and its metric scene never disagree.

    source = registry.build("source", "nuscenes", NuScenesConfig(root=..., version="v1.0-mini"))
    for ep in source.episodes():
        records = source.load(ep)
        scenes, metric = source.scenes_of(records), source.metric_scenes_of(records)

`sensors` names what the source's `AgentInput`s hold, out of `SENSORS`; a sensor a source does not have
is filled with a zero image of the configured size and shape and listed in `Scene.meta["absent"]`
(students still run; the absence is recorded, never hidden). Every source's `AgentInput.bev` is the same
representation — the world's 2-channel LiDAR height histogram (world/lidar.py `splat`) on the source's
`BevConfig` grid, centred on the ego frame's origin — real sweeps go through data/sources/lidar.py. A
BEV drawn from labels (map, boxes) is never a student input: it is `Privileged.labelled_bev`, where the
source can draw it (`privileged` names that, out of `PRIVILEGED`). `store_config()` is the resolved, JSON-able
description saved in a SceneStore's manifest (its hash guards resuming a collection).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from drivedistill.types import Scene

if TYPE_CHECKING:
    from drivedistill.geometry.metric_scene import MetricScene

# AgentInput: camera = RGB images; lidar_bev = the LiDAR height histogram (world/lidar.py) of range returns
# (a real sweep, or the world's ray-cast sensor); ego_status = speed/acceleration/yaw rate
SENSORS = ("camera", "lidar_bev", "ego_status")
# Privileged: labelled_bev = BEV raster drawn from labels (world/bev.py: drivable area, markings, boxes)
PRIVILEGED = ("labelled_bev",)

R = TypeVar("R")


class SourceError(ValueError):
    """Bad source input: a missing file, table, split or version; the message names the file and the fix."""


class Source(ABC, Generic[R]):
    """Episodes → records → (`Scene`s, `MetricScene`s). See the module docstring."""

    name: str = ""
    sensors: tuple[str, ...] = ()
    privileged: tuple[str, ...] = ()

    @abstractmethod
    def episodes(self) -> list[str]:
        """Episode keys in a fixed order (a world episode index, an AV2 log id, a nuScenes scene name)."""

    @abstractmethod
    def load(self, episode: str) -> R:
        """The parsed records of one episode."""

    @abstractmethod
    def scenes_of(self, records: R) -> list[Scene]:
        """Training samples of one episode, in time order."""

    @abstractmethod
    def metric_scenes_of(self, records: R) -> list[MetricScene]:
        """PDMS scoring scenes of the same records (rear-axle frame at t = 0)."""

    @abstractmethod
    def store_config(self) -> dict[str, Any]:
        """The resolved config saved with a store (JSON values)."""

    def episode_info(self, records: R) -> dict[str, Any]:
        """Per-episode facts for the store manifest (JSON values); override to add more."""
        return {"source": self.name}

    # ----- conveniences built on the above ----------------------------------------------------------
    def scenes(self) -> Iterator[Scene]:
        for ep in self.episodes():
            yield from self.scenes_of(self.load(ep))

    def metric_scenes(self) -> list[MetricScene]:
        return [m for ep in self.episodes() for m in self.metric_scenes_of(self.load(ep))]
