"""The annotator interface: a scene (with its privileged part) → an `Annotation` or a stored failure.

    annotator = registry.build("annotator", "rules")          # or "openai", "transformers"
    results = annotator.annotate([(scene, sample_hash), ...])  # one AnnotationResult per scene

`key()` hashes everything that changes the answers (name, output-relevant config, prompt and schema
versions) but not throughput knobs (threads, rate limits, retries); the cache is keyed by
(sample hash, annotator key).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from drivedistill.annotate.prompts import PROMPT_VERSION
from drivedistill.annotate.schema import SCHEMA_VERSION, Annotation
from drivedistill.config import config_hash, to_dict
from drivedistill.types import Privileged, Scene


@dataclass(frozen=True)
class AnnotationResult:
    """The outcome for one sample: `annotation` when valid, else `error` and the model's `raw` text."""

    token: str
    sample_hash: str
    annotation: Annotation | None
    raw: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.annotation is not None


class Annotator:
    """Base class. Subclasses set `name` and `cfg` and implement `annotate_one`."""

    name: str = ""
    # config fields that do not change the answers (excluded from `key()`)
    throughput_fields: tuple[str, ...] = ()

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def identity(self) -> dict[str, Any]:
        """Everything that determines the answers; hashed into `key()`."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in self.throughput_fields}
        return {"annotator": self.name, "config": cfg, "prompt": PROMPT_VERSION, "schema": SCHEMA_VERSION}

    def key(self) -> str:
        """Annotator cache key (12 hex chars)."""
        return config_hash(self.identity())

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def annotate(self, items: Sequence[tuple[Scene, str]]) -> list[AnnotationResult]:
        """Annotate (scene, sample_hash) pairs, in order. Remote annotators override this to run concurrently."""
        return [self.annotate_one(scene, h) for scene, h in items]

    def annotate_iter(self, items: Iterable[tuple[Scene, str]]) -> Iterator[AnnotationResult]:
        """Stream results in input order (`annotate_store` writes them chunk by chunk); remote annotators
        override this to keep several samples in flight."""
        for scene, h in items:
            yield self.annotate_one(scene, h)

    def close(self) -> None:
        """Release clients / models (no-op by default)."""


def require_privileged(scene: Scene, who: str) -> Privileged:
    """The scene's privileged part, or a clear error: annotators read the future to describe it."""
    if scene.privileged is None:
        raise ValueError(
            f"{who}: scene '{scene.token}' has no privileged part; annotators need the future trajectory. "
            "Load scenes from the SceneStore directly, not through Scene.without_privileged()."
        )
    return scene.privileged
