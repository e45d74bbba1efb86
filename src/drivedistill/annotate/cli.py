"""`drivedistill annotate`: VLM-AD annotation of a SceneStore into the annotation cache.

    drivedistill annotate --data runs/x/store --annotator rules [--out CACHE] [--split train]
                          [--chunk-size 32] [--limit N] [--retry-failed] [--annotator.KEY=VALUE ...]

Samples already in the cache for this annotator key are skipped (so an interrupted run resumes); each
chunk is written as soon as it is done, and an interrupted run writes the finished samples that precede
the first unfinished one before it stops. Remote annotators keep several samples in flight (`--annotator.concurrency=N` for `openai`).
Prints a summary: done / cached / failed, samples/s (and tokens/s when the server reports usage), retries
by cause.
"""

from __future__ import annotations

import argparse
import inspect
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.executor import Executor, InlineExecutor, add_executor_args, executor_config, make_executor
from drivedistill.types import Scene


class SceneSource(Protocol):
    """What annotation needs from a SceneStore."""

    def tokens(self, split: str | None = None) -> list[str]: ...
    def load(self, token: str, with_privileged: bool = True) -> Scene: ...
    def sample_hash(self, token: str) -> str: ...


@dataclass(frozen=True)
class AnnotateSummary:
    key: str  # annotator key (cache sub-directory)
    out: Path  # cache root
    done: int  # annotated validly in this run
    failed: int  # samples that failed in this run: invalid answer or failed request (stored with the error)
    cached: int  # skipped: already in the cache
    retries: int  # transient request errors retried (remote annotators)
    seconds: float = 0.0  # wall time of this run's annotation (cache reads excluded)
    stats: dict[str, int] = field(
        default_factory=dict
    )  # the annotator's counters (requests, retry causes, tokens)

    @property
    def samples_per_s(self) -> float:
        """Samples annotated (valid or failed) per second of wall time in this run."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        """Prompt + completion tokens per second as the server reported them (None without usage)."""
        tokens = self.stats.get("prompt_tokens", 0) + self.stats.get("completion_tokens", 0)
        return tokens / self.seconds if tokens and self.seconds > 0 else None

    def line(self) -> str:
        rate = f"{self.samples_per_s:.2f} samples/s in {self.seconds:.1f} s"
        if self.tokens_per_s is not None:
            rate += (
                f", {self.tokens_per_s:.0f} tokens/s ({self.stats.get('prompt_tokens', 0)} prompt + "
                f"{self.stats.get('completion_tokens', 0)} completion)"
            )
        causes = ", ".join(
            f"{k.removeprefix('retry_')} {v}" for k, v in sorted(self.stats.items()) if k.startswith("retry_")
        )
        retried = f"; {self.retries} request(s) retried ({causes})" if self.retries else ""
        return (
            f"done {self.done} / cached {self.cached} / failed {self.failed} (annotator key {self.key}, "
            f"{self.out}); {rate}{retried}"
        )


def default_out(data: Path) -> Path:
    """Default cache root: a sibling of the store, `<store>_annotations`."""
    return data.parent / f"{data.name}_annotations"


def annotate_store(
    source: SceneSource,
    annotator: Annotator,
    out: str | Path,
    split: str | None = None,
    chunk_size: int = 32,
    retry_failed: bool = False,
    limit: int = 0,
    on_progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
    make_annotator: Callable[[], Annotator] | None = None,
    task_source: SceneSource | None = None,
) -> AnnotateSummary:
    """Annotate every sample of `split` (None = all) not yet cached for this annotator, chunk by chunk.

    `limit` > 0 caps the number of samples considered (first in store order). `on_progress(n)` is called
    with the number of samples finished after every chunk (cached ones count at once).

    With an `executor` that runs tasks elsewhere (a process pool or Ray), each chunk is one task: the
    worker builds its annotator with `make_annotator()` (picklable, e.g. an `AnnotatorSpec`; built once
    per worker process) and reads its samples from `task_source` (default `source`; picklable, e.g. a
    `StoreSource`, so workers open the store themselves instead of receiving scenes); this
    process writes the chunks in order, so the cache holds the same rows in the same shards as a
    local run. A chunk whose task still fails after the executor's retries is stored as failures with
    the task's error (`--retry-failed` re-asks them), never dropped.
    """
    if chunk_size < 1:
        raise ValueError(f"annotate: chunk_size must be >= 1, got {chunk_size}")
    cache = AnnotationCache(out)
    key = cache.register(annotator)
    cached = cache.read(key)
    tokens = source.tokens(split)
    if limit > 0:
        tokens = tokens[:limit]
    hashes = {t: source.sample_hash(t) for t in tokens}
    todo = [t for t in tokens if hashes[t] not in cached or (retry_failed and not cached[hashes[t]].ok)]
    skipped = len(tokens) - len(todo)
    if on_progress is not None:
        on_progress(skipped)
    if executor is not None and not isinstance(executor, InlineExecutor):
        if make_annotator is None:
            raise ValueError("annotate_store: an executor other than local/1 worker needs make_annotator")
        return _annotate_remote(
            task_source or source,
            key,
            cache,
            todo,
            hashes,
            skipped,
            chunk_size,
            on_progress,
            executor,
            make_annotator,
        )
    done = failed = 0
    buffer: list[AnnotationResult] = []

    def flush() -> None:
        nonlocal done, failed
        if buffer:
            chunk = buffer[:]
            buffer.clear()
            cache.append(key, chunk)  # one atomic shard, written from this thread only
            ok = sum(r.ok for r in chunk)
            done, failed = done + ok, failed + len(chunk) - ok
            if on_progress is not None:
                on_progress(len(chunk))

    start = time.monotonic()
    try:
        for result in annotator.annotate_iter((source.load(t), hashes[t]) for t in todo):
            buffer.append(result)
            if len(buffer) >= chunk_size:
                flush()
    finally:
        flush()  # an interrupted or aborted run keeps the finished samples that precede the first unfinished one
    seconds = time.monotonic() - start
    stats_fn = getattr(annotator, "stats", None)  # remote annotators count requests, retries, tokens
    stats: dict[str, int] = dict(stats_fn()) if callable(stats_fn) else {}
    retries = int(getattr(annotator, "retries", 0))
    return AnnotateSummary(key, Path(out), done, failed, skipped, retries, seconds, stats)


def _annotate_remote(
    source: SceneSource,
    key: str,
    cache: AnnotationCache,
    todo: list[str],
    hashes: dict[str, str],
    skipped: int,
    chunk_size: int,
    on_progress: Callable[[int], None] | None,
    executor: Executor,
    make_annotator: Callable[[], Annotator],
) -> AnnotateSummary:
    """`annotate_store` with one executor task per chunk; chunks are written in order as they come."""
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    tasks = [(make_annotator, source, [(t, hashes[t]) for t in chunk]) for chunk in chunks]
    done = failed = 0
    stats: Counter[str] = Counter()
    start = time.monotonic()
    for outcome in executor.imap(annotate_chunk, tasks):
        chunk = chunks[outcome.index]
        if outcome.value is not None:
            results, chunk_stats = outcome.value
            stats.update(chunk_stats)
        else:  # the task failed for good: every sample of the chunk is stored as a failure
            error = f"annotation task failed after {outcome.attempts} attempt(s): {outcome.error}"
            results = [AnnotationResult(t, hashes[t], None, "", error) for t in chunk]
        cache.append(key, results)
        ok = sum(r.ok for r in results)
        done, failed = done + ok, failed + len(results) - ok
        if on_progress is not None:
            on_progress(len(results))
    seconds = time.monotonic() - start
    stats["task_retries"] = executor.retried
    return AnnotateSummary(key, cache.root, done, failed, skipped, stats["retries"], seconds, dict(stats))


_WORKER_ANNOTATORS: dict[bytes, Annotator] = {}  # per worker process: built once, reused across chunks


def annotate_chunk(
    task: tuple[Callable[[], Annotator], SceneSource, list[tuple[str, str]]],
) -> tuple[list[AnnotationResult], dict[str, int]]:
    """Executor task: annotate one chunk of (token, sample hash); returns the results in order and the
    annotator's counters for this chunk (requests, retries, tokens)."""
    make, source, pairs = task
    ident = pickle.dumps(make)
    annotator = _WORKER_ANNOTATORS.get(ident)
    if annotator is None:
        annotator = _WORKER_ANNOTATORS[ident] = make()
    stats_fn = getattr(annotator, "stats", None)
    before: Counter[str] = Counter(stats_fn() if callable(stats_fn) else {})
    results = list(annotator.annotate_iter((source.load(t), h) for t, h in pairs))
    after: Counter[str] = Counter(stats_fn() if callable(stats_fn) else {})
    after.subtract(before)
    return results, {k: v for k, v in after.items() if v}


@dataclass(frozen=True)
class AnnotatorSpec:
    """A picklable recipe for an annotator: registry name, `--annotator.KEY=VALUE` overrides, camera."""

    name: str
    overrides: tuple[str, ...] = ()
    camera: Any = None

    def __call__(self) -> Annotator:
        return build_annotator(self.name, self.overrides, camera=self.camera)


@dataclass(frozen=True)
class StoreSource:
    """A picklable SceneStore reference for executor tasks (each process opens the store once)."""

    path: str

    def _store(self) -> Any:
        from drivedistill.data.store import SceneStore

        store = _OPEN_STORES.get(self.path)
        if store is None:
            store = _OPEN_STORES[self.path] = SceneStore(self.path)
        return store

    def tokens(self, split: str | None = None) -> list[str]:
        return list(self._store().tokens(split))

    def load(self, token: str, with_privileged: bool = True) -> Scene:
        return self._store().load(token, with_privileged)  # type: ignore[no-any-return]

    def sample_hash(self, token: str) -> str:
        return str(self._store().sample_hash(token))


_OPEN_STORES: dict[str, Any] = {}


def store_camera(store_config: dict[str, Any]) -> Any:
    """The `CameraConfig` a store was collected with (its resolved config's `camera` or `world.camera`), or None."""
    from drivedistill.config import from_dict
    from drivedistill.world.camera import CameraConfig

    node = store_config.get("camera") or dict(store_config.get("world") or {}).get("camera")
    return from_dict(CameraConfig, node, "camera") if isinstance(node, dict) else None


def build_annotator(name: str, overrides: Sequence[str], camera: Any = None) -> Annotator:
    """Build annotator `name` with dotted `--annotator.KEY=VALUE` overrides (unknown keys are errors)."""
    from drivedistill import registry
    from drivedistill.config import from_dict, parse_overrides

    entry = registry.get("annotator", name)
    data = parse_overrides(overrides).get("annotator", {})
    cfg = from_dict(entry.config_cls, data, "annotator") if entry.config_cls is not None else None
    kwargs = {"camera": camera} if "camera" in inspect.signature(entry.builder).parameters else {}
    annotator: Annotator = entry.builder(cfg, **kwargs)
    return annotator


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from drivedistill.data.store import SceneStore

    parser = argparse.ArgumentParser(
        prog="drivedistill annotate",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, help="SceneStore directory")
    parser.add_argument("--annotator", required=True, help="rules | openai | transformers")
    parser.add_argument("--out", type=Path, help="annotation cache directory (default: <data>_annotations)")
    parser.add_argument("--split", default=None, help="train | val (default: every split)")
    parser.add_argument("--chunk-size", type=int, default=32, help="samples per written shard")
    parser.add_argument("--limit", type=int, default=0, help="annotate at most the first N samples")
    parser.add_argument("--retry-failed", action="store_true", help="re-ask samples whose answer was invalid")
    add_executor_args(parser)
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--annotator.")]
    if bad:
        parser.error(
            f"unrecognized arguments: {' '.join(bad)} (annotator options look like --annotator.KEY=VALUE)"
        )
    try:
        ex_cfg = executor_config(args)
    except ValueError as e:
        parser.error(str(e))
    store = SceneStore(args.data)
    spec = AnnotatorSpec(args.annotator, tuple(rest), store_camera(store.config))
    annotator = spec()
    out = args.out or default_out(args.data)
    total = (
        len(store.tokens(args.split)) if args.limit <= 0 else min(args.limit, len(store.tokens(args.split)))
    )
    columns = (TextColumn("annotate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    executor = make_executor(ex_cfg)
    try:
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("annotate", total=total)
            summary = annotate_store(
                store,
                annotator,
                out,
                args.split,
                args.chunk_size,
                args.retry_failed,
                args.limit,
                on_progress=lambda n: bar.advance(task, n),
                executor=executor,
                make_annotator=spec,
                task_source=StoreSource(str(args.data)),
            )
    finally:
        annotator.close()
        executor.close()
    print(summary.line())
    if summary.failed:
        print(
            f"{summary.failed} sample(s) failed (invalid answer or failed request), stored with their error and "
            "raw text; re-ask them with --retry-failed",
            file=sys.stderr,
        )
    return 0
