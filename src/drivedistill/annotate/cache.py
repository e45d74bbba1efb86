"""Annotation cache: append-only Parquet shards keyed by (sample hash, annotator key).

    root/<annotator key>/annotator.json              who wrote it (name + resolved identity, no secrets)
    root/<annotator key>/part-<time_ns>-<pid>-<rand>.parquet one chunk of results, written atomically

A chunk is written as soon as it is annotated, so an interrupted run loses at most one chunk and a
re-run skips every sample already present (valid or failed). Failures keep the model's raw text and
error; `--retry-failed` re-asks them, and a later row for the same sample hash supersedes earlier ones.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.schema import ALL_LABEL_GROUPS, TEXT_FIELDS, Annotation
from drivedistill.utils.io import atomic_write_json, atomic_write_with

_LABELS = tuple(ALL_LABEL_GROUPS)  # control, turn, lane + the optional cause groups (h8, issue #16)
COLUMNS = ("sample_hash", "annotator_key", "token", "ok", *TEXT_FIELDS, *_LABELS, "raw", "error")
ARROW_SCHEMA = pa.schema([(c, pa.bool_() if c == "ok" else pa.string()) for c in COLUMNS])


class CacheError(RuntimeError):
    """The cache is missing or inconsistent; the message names the directory and the fix."""


class AnnotationCache:
    """Read/append annotations under `root` (one sub-directory per annotator key)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def register(self, annotator: Annotator) -> str:
        """Record the annotator's identity beside its shards; returns its key."""
        key = annotator.key()
        path = self.dir(key) / "annotator.json"
        if not path.exists():
            atomic_write_json(path, {"key": key, **annotator.identity()})
        return key

    def identity(self, key: str) -> dict[str, Any]:
        path = self.dir(key) / "annotator.json"
        if not path.exists():
            raise CacheError(
                f"{path} does not exist: no annotations for key {key} (run `drivedistill annotate`)"
            )
        return dict(json.loads(path.read_text()))

    def annotator_keys(self) -> list[str]:
        """Annotator keys present in the cache."""
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/annotator.json"))

    def append(self, key: str, results: Sequence[AnnotationResult]) -> Path | None:
        """Write one chunk of results as a new shard (atomic); returns its path (None for no results)."""
        if not results:
            return None
        rows: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        for r in results:
            ann = r.annotation.to_dict() if r.annotation is not None else {}
            row: dict[str, Any] = {
                "sample_hash": r.sample_hash,
                "annotator_key": key,
                "token": r.token,
                "ok": r.ok,
            }
            row.update({f: ann.get(f, "") for f in (*TEXT_FIELDS, *_LABELS)})
            row.update(raw=r.raw, error=r.error)
            for c in COLUMNS:
                rows[c].append(row[c])
        table = pa.table(rows, schema=ARROW_SCHEMA)
        # time first: shards sort in write order (later rows supersede); pid + random suffix: two writers
        # (threads or processes) never pick the same name, and each shard is renamed into place whole
        path = self.dir(key) / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))
        return path

    def read(self, key: str) -> dict[str, AnnotationResult]:
        """sample hash → latest result for annotator `key` (empty when nothing is cached)."""
        out: dict[str, AnnotationResult] = {}
        for path in sorted(self.dir(key).glob("part-*.parquet")):
            try:
                table = pq.read_table(path, schema=ARROW_SCHEMA)
            except (OSError, pa.ArrowException) as e:
                raise CacheError(
                    f"{path} is unreadable ({e}); delete it and re-run `drivedistill annotate`"
                ) from None
            for row in table.to_pylist():
                if row["annotator_key"] != key:
                    raise CacheError(f"{path} holds rows of annotator {row['annotator_key']}, expected {key}")
                fields = {f: row.get(f) or "" for f in (*TEXT_FIELDS, *_LABELS)}  # older shards lack causes
                ann = Annotation(**fields) if row["ok"] else None
                out[row["sample_hash"]] = AnnotationResult(
                    row["token"], row["sample_hash"], ann, row["raw"], row["error"]
                )
        return out

    def counts(self, key: str) -> tuple[int, int]:
        """(valid, failed) samples cached for `key`."""
        results = self.read(key).values()
        ok = sum(r.ok for r in results)
        return ok, len(results) - ok


def annotation_lines(root: str | Path, sample_hash: str) -> list[str]:
    """Human-readable lines for one sample from every annotator in the cache at `root` (for `data show`)."""
    cache = AnnotationCache(root)
    lines: list[str] = []
    for key in cache.annotator_keys():
        r = cache.read(key).get(sample_hash)
        if r is None:
            continue
        who = f"VLM-AD [{cache.identity(key).get('annotator', '?')} {key}]"
        if r.annotation is None:
            lines.append(f"{who} FAILED: {r.error}")
            continue
        a = r.annotation
        lines += [
            f"{who} control: {a.control} | turn: {a.turn} | lane: {a.lane}",
            f"  now: {a.current_action}",
            f"  next: {a.next_action}",
            f"  why: {a.reasoning}",
        ]
    return lines
