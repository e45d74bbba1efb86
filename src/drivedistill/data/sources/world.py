"""The embedded default world: expert episodes simulated on highway-env (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from drivedistill.registry import register
from drivedistill.types import Scene
from drivedistill.world.config import WorldConfig
from drivedistill.world.episode import EpisodeResult, run_episode


@dataclass
class WorldSource:
    """Episodes 0 .. cfg.num_episodes - 1 of the default world, simulated lazily on iteration."""

    cfg: WorldConfig

    def __len__(self) -> int:
        return self.cfg.num_episodes

    def episode(self, index: int) -> EpisodeResult:
        if not 0 <= index < self.cfg.num_episodes:
            raise IndexError(f"WorldSource.episode: index {index} outside 0..{self.cfg.num_episodes - 1}")
        return run_episode(self.cfg, index)

    def __iter__(self) -> Iterator[EpisodeResult]:
        for i in range(self.cfg.num_episodes):
            yield run_episode(self.cfg, i)

    def scenes(self) -> Iterator[Scene]:
        """Every sample of every episode, in episode order."""
        for result in self:
            yield from result.scenes


@register("source", "world", WorldConfig)
def build(cfg: WorldConfig) -> WorldSource:
    return WorldSource(cfg)
