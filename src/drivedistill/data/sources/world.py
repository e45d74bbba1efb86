"""The embedded default world: expert episodes simulated on highway-env (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from drivedistill.config import to_dict
from drivedistill.data.sources.base import Source
from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.registry import register
from drivedistill.types import Scene
from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import EpisodeResult, run_episode


@dataclass
class WorldSource(Source[EpisodeResult]):
    """Episodes 0 .. cfg.num_episodes - 1 (+ the dedicated val episodes, `WorldConfig.val_episodes`) of
    the default world, simulated lazily on `load`.

    Records = one simulated `EpisodeResult`; its scenes are the training samples and each metric scene is
    `metrics.plans.metric_scene_of` of a sample (box-centre frame → rear-axle frame, world/ego.py's geometry, the scenario's speed limit).
    Sensors: the camera and the ray-cast LiDAR histogram the world renders (world/camera.py,
    world/lidar.py); privileged: the labelled BEV (world/bev.py).
    """

    cfg: WorldConfig
    name = "world"
    sensors = ("camera", "lidar_bev", "ego_status")
    privileged = ("labelled_bev",)

    def __len__(self) -> int:
        return self.cfg.num_episodes + self.cfg.val_episodes

    def episodes(self) -> list[str]:
        return [str(i) for i in self.cfg.episode_indices()]

    def episode(self, index: int) -> EpisodeResult:
        if index not in self.cfg.episode_indices():
            raise IndexError(
                f"WorldSource.episode: index {index} is not an episode of this world "
                f"(0..{self.cfg.num_episodes - 1}, then {self.cfg.val_episodes} val episodes)"
            )
        return run_episode(self.cfg, index)

    def load(self, episode: str) -> EpisodeResult:
        return self.episode(int(episode))

    def scenes_of(self, records: EpisodeResult) -> list[Scene]:
        return list(records.scenes)

    def metric_scenes_of(self, records: EpisodeResult) -> list[MetricScene]:
        from drivedistill.metrics.plans import metric_scene_of

        return [metric_scene_of(s) for s in records.scenes]

    def store_config(self) -> dict[str, Any]:
        return {"world": to_dict(self.cfg)}

    def episode_info(self, records: EpisodeResult) -> dict[str, Any]:
        info: dict[str, Any] = {
            "source": self.name,
            "scenario": records.scenario,
            "collided": bool(records.collided),
            "offroad": bool(records.offroad),
        }
        split = self.cfg.split_of(records.index)
        if split is not None:
            info["split"] = split
        return info

    def __iter__(self) -> Iterator[EpisodeResult]:
        for i in self.cfg.episode_indices():
            yield run_episode(self.cfg, i)


@register("source", "world", WorldConfig)
def build(cfg: WorldConfig) -> WorldSource:
    return WorldSource(cfg)
