"""The unlabelled corpus teachers learn from: more episodes of the study's world than the students have labels.

LatentVLA's premise (reference/methods.md §2) is that the LAM and the teacher learn from far more video
than the planner has labels; EvoDrive's perception VLM, too, comes from far more data than the planner's
(its occupancy targets are the simulator's, as a real one's come from auto-labelled perception data). In
the embedded world collection is cheap, so a teacher's corpus is the students' training split plus
`extra_episodes` more episodes of the same world under another seed (so no episode is shared with the
students' train or val split). The students never see the extra episodes.

    extra = study_corpus(scenes, CorpusConfig(extra_episodes=100), run_dir / "corpus", "recipes.latent_vla.corpus")
    data = corpus_dataset(study_store, extra, extras={EGO_CODES_KEY: codes})   # ConcatDataset + collate
    samples_seen = corpus_sizes(study_store, extra)   # {"student_train": …, "lam_teacher_train": …}

Two recipes with the same `CorpusConfig` collect the same episodes (collection is deterministic): each keeps
its own copy in its stage directory, so neither depends on the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset

from drivedistill.config import check
from drivedistill.data.dataset import SceneDataset, collate
from drivedistill.types import Batch, Scene


@dataclass
class CorpusConfig:
    """Extra unlabelled episodes for the LAM and the latent teacher."""

    extra_episodes: int = field(default=0, metadata=check(ge=0))  # on top of the study's store (0 = none)
    # the corpus world's seed = study world seed + seed_offset (disjoint episodes). Not 1000: the closed-loop
    # evaluation plays episodes (seed 1000, i) (metrics/closedloop.py), which a corpus at 0 + 1000 contained.
    seed_offset: int = field(default=2000, metadata=check(ge=1))

    def __post_init__(self) -> None:
        if self.extra_episodes < 0:
            raise ValueError(f"CorpusConfig.extra_episodes must be ≥ 0, got {self.extra_episodes}")
        if self.seed_offset == 0 and self.extra_episodes > 0:
            raise ValueError(
                "CorpusConfig.seed_offset must be ≠ 0: with the study's seed the corpus would repeat its episodes"
            )


def collect_corpus(world: Any, out: str | Path, cfg: CorpusConfig, workers: int = 1) -> Path | None:
    """Collect `cfg.extra_episodes` episodes of `world` (a WorldConfig) under seed + seed_offset into a
    store at `out` (all samples in split "train"; resumed if it exists). Returns its path, None if none."""
    if cfg.extra_episodes == 0:
        return None
    from drivedistill.world.collect import collect

    corpus_world = dataclasses.replace(
        world, num_episodes=cfg.extra_episodes, val_episodes=0, seed=int(world.seed) + cfg.seed_offset
    )
    collect(corpus_world, out, workers=workers, val_fraction=0.0, show_progress=False)
    return Path(out)


def study_corpus(scenes: Any, cfg: CorpusConfig, out: str | Path, config_key: str) -> list[Any]:
    """The extra stores of a teacher's corpus: `cfg.extra_episodes` episodes of the world the study store
    `scenes` (a SceneStore) was collected from, collected into `out` (resumed if there) → [SceneStore],
    or [] for extra_episodes 0. `config_key` names the setting in the error for a store with no world."""
    if cfg.extra_episodes == 0:
        return []
    from drivedistill.config import ConfigError, from_dict
    from drivedistill.data.store import SceneStore
    from drivedistill.world.config import WorldConfig

    world = scenes.config.get("world")
    if not isinstance(world, dict):
        raise ConfigError(
            f"{config_key}.extra_episodes={cfg.extra_episodes}: the store {scenes.root} was not collected "
            f"from the embedded world, so there is no world to collect the corpus from; set "
            f"{config_key}.extra_episodes=0"
        )
    collect_corpus(from_dict(WorldConfig, world, "world"), out, cfg)
    return [SceneStore(out)]


class CorpusDataset(ConcatDataset[Scene]):
    """The students' train split + every sample of the extra stores, with one `collate` for all."""

    def __init__(self, parts: Sequence[SceneDataset], extras: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        super().__init__(list(parts))
        self.extras = dict(extras)
        self.with_privileged = all(p.with_privileged for p in parts)

    def collate(self, scenes: Sequence[Scene]) -> Batch:
        return collate(scenes, self.extras)


def corpus_dataset(
    store: Any,
    extra_stores: Sequence[Any],
    extras: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    split: str = "train",
) -> CorpusDataset:
    """`split` of the study store + all samples of `extra_stores` (SceneStores), decoded once and cached.
    Tokens must be unique across the stores (the world's tokens carry the seed)."""
    parts = [SceneDataset(store, split, cache_decoded=True)]
    parts += [SceneDataset(s, None, cache_decoded=True) for s in extra_stores]
    seen: set[str] = set()
    for p in parts:
        clash = seen.intersection(p.tokens)
        if clash:
            raise ValueError(
                f"corpus_dataset: token {sorted(clash)[0]!r} is in two stores; collect the corpus with another "
                "seed (CorpusConfig.seed_offset)"
            )
        seen.update(p.tokens)
    return CorpusDataset(parts, extras or {})


def corpus_sizes(store: Any, extra_stores: Sequence[Any], split: str = "train") -> dict[str, int]:
    """How many samples the students and the LAM/teacher train on (for results.json and the report)."""
    student = len(store.tokens(split))
    return {
        "student_train": student,
        "lam_teacher_train": student + sum(len(s.tokens(None)) for s in extra_stores),
    }
