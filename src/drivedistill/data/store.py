"""SceneStore: a directory of Parquet shards (one row per sample) plus manifest.json.

    root/manifest.json            schema version, resolved config, shards (sha256, rows, episodes,
                                  per-sample content hashes), episodes (split, scenario, outcome), stats
    root/shard-00000.parquet ...  rows encoded by `drivedistill.data.schema`

Writing: `write_shard` encodes and writes one shard atomically (any process may call it) and returns its
manifest entry; the shard file also carries that entry in its Parquet metadata, so a shard written
before a crash can be verified and adopted. `SceneStoreWriter` owns manifest.json and rewrites it
atomically after every shard. Reading: `SceneStore(root)` loads shards lazily, verifying each shard's
sha256 on first use; a corrupt shard raises `StoreError` naming it while the other shards still load.

Splits are by episode: `split_for_episode` hashes the episode id against the validation fraction, so a
split never depends on which shard or process wrote the episode, and no episode is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from drivedistill.data.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    RowDecodeError,
    ShardColumns,
    scene_hash,
    scene_to_row,
)
from drivedistill.types import Command, Scene
from drivedistill.utils.io import atomic_write_json, atomic_write_with, sha256_file

FORMAT = "drivedistill.SceneStore"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
ROW_GROUP_SIZE = 32  # rows per Parquet row group (bounds what one streaming read holds)
_META_KEY = b"drivedistill.shard"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.parquet$")


class StoreError(RuntimeError):
    """A SceneStore is missing, corrupt or inconsistent; the message names the file and the fix."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def split_for_episode(episode: str, val_fraction: float) -> str:
    """ "val" if sha256(episode id) falls below `val_fraction` of the hash range, else "train"."""
    if not 0.0 <= val_fraction < 1.0:
        raise StoreError(f"val_fraction must be in [0, 1), got {val_fraction}")
    u = int.from_bytes(hashlib.sha256(episode.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def write_shard(
    root: Path,
    index: int,
    scenes: Sequence[Scene],
    *,
    val_fraction: float,
    config_hash: str,
    episodes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Encode `scenes` into root/shard-<index>.parquet (atomically) and return its manifest entry.

    `episodes`: per-episode info (JSON values, e.g. scenario, collided, stats) keyed by episode id; it may
    list episodes without samples. An episode whose info has "split" ("train" / "val", e.g. the world's
    dedicated validation episodes) keeps it; the others get the hash split of `val_fraction`. Each episode
    gets "split" and "num_samples" added.
    """
    root = Path(root)
    eps: dict[str, dict[str, Any]] = {e: dict(v) for e, v in (episodes or {}).items()}

    def split_of(episode: str) -> str:
        given = eps.get(episode, {}).get("split")
        if given is None:
            return split_for_episode(episode, val_fraction)
        if given not in SPLITS:
            raise StoreError(
                f"shard {shard_name(index)}: episode {episode!r} has split {given!r}; use {SPLITS}"
            )
        return str(given)

    rows, samples, seen = [], {}, set()
    for scene in scenes:
        if scene.token in seen:
            raise StoreError(f"shard {shard_name(index)}: duplicate token {scene.token!r}")
        seen.add(scene.token)
        split = split_of(scene.episode)
        rows.append(scene_to_row(scene, split))
        samples[scene.token] = {"row": len(rows) - 1, "episode": scene.episode, "hash": scene_hash(scene)}
        eps.setdefault(scene.episode, {})
    for ep, info in eps.items():
        info["split"] = split_of(ep)
        info["num_samples"] = sum(1 for s in scenes if s.episode == ep)
    entry: dict[str, Any] = {
        "index": index,
        "file": shard_name(index),
        "num_rows": len(rows),
        "config_hash": config_hash,
        "episodes": eps,
        "samples": samples,
        "counts": _counts(rows),
    }
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {_META_KEY: json.dumps(entry).encode()}
    )
    path = root / entry["file"]
    atomic_write_with(
        path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    )
    entry["sha256"] = sha256_file(path)
    entry["bytes"] = path.stat().st_size
    return entry


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Samples per split, scenario, command name and scripted event (meta "event", None = "none")."""
    out: dict[str, Counter[str]] = {k: Counter() for k in ("split", "scenario", "command", "event")}
    for r in rows:
        out["split"][r["split"]] += 1
        out["scenario"][r["scenario"]] += 1
        out["command"][Command(r["command"]).name.lower()] += 1
        out["event"][str(json.loads(r["meta_json"]).get("event") or "none")] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def read_shard_entry(path: Path) -> dict[str, Any]:
    """The manifest entry embedded in a shard's Parquet footer (raises `StoreError` if unreadable)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{path}: not a readable Parquet shard ({e})") from None
    if _META_KEY not in meta:
        raise StoreError(
            f"{path}: Parquet file without a drivedistill shard entry; not written by write_shard"
        )
    entry: dict[str, Any] = json.loads(meta[_META_KEY])
    return entry


def summarize(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Store-level stats from shard entries: sample counts and the expert's episode outcomes."""
    counts: dict[str, Counter[str]] = {}
    episodes: dict[str, Mapping[str, Any]] = {}
    for sh in shards:
        for key, c in sh["counts"].items():
            counts.setdefault(key, Counter()).update(c)
        episodes.update(sh["episodes"])
    collided = [bool(e["collided"]) for e in episodes.values() if "collided" in e]
    return {
        "num_samples": sum(int(sh["num_rows"]) for sh in shards),
        "num_episodes": len(episodes),
        "episodes_per_split": dict(Counter(e["split"] for e in episodes.values())),
        "expert_collision_free_rate": (1.0 - sum(collided) / len(collided)) if collided else None,
        "samples_per": {k: dict(sorted(v.items())) for k, v in counts.items()},
    }


def _rows_match(path: Path, entry: Mapping[str, Any]) -> bool:
    """Every row of the shard decodes and has the content hash its embedded entry records."""
    table = pq.read_table(path)
    if table.num_rows != entry["num_rows"]:
        return False
    cols = ShardColumns(table)
    return all(scene_hash(cols.scene(int(v["row"]))) == v["hash"] for v in entry["samples"].values())


class SceneStoreWriter:
    """Owns root/manifest.json while a store is written; resumes a store written with the same config.

    config: the resolved config that produced the store (saved in the manifest; its hash guards resume).
    """

    def __init__(
        self, root: Path, config: Mapping[str, Any], num_shards: int, val_fraction: float = 0.2
    ) -> None:
        from drivedistill.config import config_hash

        self.root = Path(root)
        self.config = dict(config)
        self.config_hash = config_hash(self.config)
        self.num_shards = num_shards
        self.val_fraction = val_fraction
        split_for_episode("", val_fraction)  # validates the fraction
        self.shards: dict[int, dict[str, Any]] = {}
        manifest_path = self.root / MANIFEST
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            if old.get("config_hash") != self.config_hash or old.get("val_fraction") != val_fraction:
                raise StoreError(
                    f"{manifest_path}: the store was written with a different config (or val_fraction); "
                    "write to a new --out directory or delete this one"
                )
            self.shards = {int(s["index"]): s for s in old["shards"]}

    def completed(self) -> set[int]:
        """Shard indices whose file is complete: in the manifest with a matching sha256, or — not in the
        manifest (written before a crash) — carrying an embedded entry of this config whose every row
        decodes to its recorded content hash (adopted). A shard the manifest lists with another sha256 is
        corrupt and never adopted: it is dropped from the manifest and collected again."""
        done: set[int] = set()
        for index in range(self.num_shards):
            path = self.root / shard_name(index)
            if not path.exists():
                self.shards.pop(index, None)
                continue
            known = self.shards.pop(index, None)
            if known is not None:
                if sha256_file(path) == known["sha256"]:
                    self.shards[index] = known
                    done.add(index)
                continue
            try:
                entry = read_shard_entry(path)
                if entry.get("config_hash") != self.config_hash or not _rows_match(path, entry):
                    continue
            except (StoreError, OSError, pa.ArrowException, RowDecodeError):
                continue
            entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
            self.add_shard(entry)
            done.add(index)
        return done

    def add_shard(self, entry: Mapping[str, Any]) -> None:
        """Record a written shard and rewrite manifest.json atomically."""
        self.shards[int(entry["index"])] = dict(entry)
        self._write_manifest()

    def _write_manifest(self) -> dict[str, Any]:
        shards = [self.shards[i] for i in sorted(self.shards)]
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "complete": sorted(self.shards) == list(range(self.num_shards)),
            "num_shards": self.num_shards,
            "val_fraction": self.val_fraction,
            "config_hash": self.config_hash,
            "config": self.config,
            "stats": summarize(shards),
            "shards": shards,
        }
        atomic_write_json(self.root / MANIFEST, manifest)
        return manifest

    def finish(self) -> dict[str, Any]:
        """Write the final manifest; raises if a planned shard is missing."""
        missing = sorted(set(range(self.num_shards)) - set(self.shards))
        if missing:
            raise StoreError(f"{self.root}: shards {[shard_name(i) for i in missing]} were not written")
        return self._write_manifest()


class SceneStore:
    """Read access to a SceneStore directory.

    store = SceneStore("runs/x/store"); store.tokens("train"); store.load(token) -> Scene
    Shards are read lazily and kept (as encoded bytes, about the on-disk size) in an LRU of
    `max_cached_shards` (default 256 ≈ the whole default store, ~1 MB per shard: shuffled training
    reads every shard again and again); a shard's sha256 is checked against the manifest on each read.
    """

    def __init__(self, root: str | Path, max_cached_shards: int = 256, verify: bool = True) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise StoreError(
                f"{path} does not exist: not a SceneStore (write one with `drivedistill collect --out DIR`)"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(
                f"{path}: invalid JSON ({e}); re-run the collection into a new directory"
            ) from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: format {self.manifest.get('format')!r} version {self.manifest.get('schema_version')!r}, "
                f"this code reads {FORMAT!r} version {SCHEMA_VERSION}; re-collect the store"
            )
        self.max_cached_shards, self.verify = max_cached_shards, verify
        self._shards: dict[int, dict[str, Any]] = {int(s["index"]): s for s in self.manifest["shards"]}
        self._where: dict[str, tuple[int, int]] = {}
        self._split: dict[str, str] = {}
        self._hash: dict[str, str] = {}
        for index in sorted(self._shards):
            sh = self._shards[index]
            for token, sample in sh["samples"].items():
                self._where[token] = (index, int(sample["row"]))
                self._hash[token] = sample["hash"]
                self._split[token] = sh["episodes"][sample["episode"]]["split"]
        self._cache: OrderedDict[int, ShardColumns] = OrderedDict()

    # ----- index ------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The resolved config that produced the store."""
        return dict(self.manifest["config"])

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.manifest["stats"])

    def __len__(self) -> int:
        return len(self._where)

    def tokens(self, split: str | None = None) -> list[str]:
        """Sample tokens in store order; `split` in SPLITS or None for every split."""
        if split is not None and split not in SPLITS:
            raise StoreError(f"unknown split {split!r}; splits are {list(SPLITS)}")
        return [t for t in self._where if split is None or self._split[t] == split]

    def split_of(self, token: str) -> str:
        self._locate(token)
        return self._split[token]

    def sample_hash(self, token: str) -> str:
        """sha256 of the sample's content (`schema.scene_hash`): the key later stages cache by."""
        self._locate(token)
        return self._hash[token]

    def _locate(self, token: str) -> tuple[int, int]:
        if token not in self._where:
            raise StoreError(f"token {token!r} is not in the store {self.root} ({len(self)} samples)")
        return self._where[token]

    # ----- reading ----------------------------------------------------------------------------------
    def shard(self, index: int) -> ShardColumns:
        """Decoded columns of one shard (cached); raises `StoreError` naming the shard if it is corrupt."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        entry = self._shards[index]
        path = self.root / entry["file"]
        fix = f"run `drivedistill data validate {self.root}`, then re-run the collection into it (it resumes)"
        if not path.exists():
            raise StoreError(f"shard {path} is missing; {fix}")
        if self.verify and sha256_file(path) != entry["sha256"]:
            raise StoreError(f"shard {path} is corrupt (sha256 differs from manifest.json); {fix}")
        try:
            cols = ShardColumns(pq.read_table(path))
        except (OSError, pa.ArrowException, RowDecodeError) as e:
            raise StoreError(f"shard {path} is unreadable ({e}); {fix}") from None
        if cols.num_rows != entry["num_rows"]:
            raise StoreError(
                f"shard {path} has {cols.num_rows} rows, manifest.json says {entry['num_rows']}; {fix}"
            )
        self._cache[index] = cols
        while len(self._cache) > self.max_cached_shards:
            self._cache.popitem(last=False)
        return cols

    def load(self, token: str, with_privileged: bool = True) -> Scene:
        """One validated `Scene`; `with_privileged=False` returns it without the privileged part."""
        index, row = self._locate(token)
        try:
            return self.shard(index).scene(row, with_privileged)
        except RowDecodeError as e:
            raise StoreError(f"shard {self.root / shard_name(index)}: {e}") from None

    def scenes(self, split: str | None = None, with_privileged: bool = True) -> Iterator[Scene]:
        """Every scene of `split`, shard by shard."""
        for token in self.tokens(split):
            yield self.load(token, with_privileged)

    # ----- integrity --------------------------------------------------------------------------------
    def validate(self, deep: bool = False) -> list[str]:
        """Problems found (empty list = valid), each naming its shard: missing, truncated, sha256 or row
        count mismatch, stray files; `deep=True` also decodes every row and re-checks its content hash."""
        problems: list[str] = []
        if not self.manifest.get("complete", False):
            problems.append(
                f"{self.root / MANIFEST}: incomplete ({len(self._shards)} of {self.manifest.get('num_shards')} "
                "shards written); re-run the collection with the same --out to finish it"
            )
        for index in sorted(self._shards):
            entry = self._shards[index]
            path = self.root / entry["file"]
            if not path.exists():
                problems.append(f"{path}: missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(
                    f"{path}: {size} bytes, manifest.json says {entry['bytes']} (truncated or rewritten)"
                )
                continue
            if sha256_file(path) != entry["sha256"]:
                problems.append(f"{path}: sha256 mismatch with manifest.json (corrupt)")
                continue
            try:
                num_rows = pq.read_metadata(path).num_rows
            except (OSError, pa.ArrowException) as e:
                problems.append(f"{path}: unreadable Parquet ({e})")
                continue
            if num_rows != entry["num_rows"]:
                problems.append(f"{path}: {num_rows} rows, manifest.json says {entry['num_rows']}")
            elif deep:
                problems += self._deep_check(index)
        listed = {e["file"] for e in self._shards.values()}
        for p in sorted(self.root.iterdir()):
            if _SHARD_RE.match(p.name) and p.name not in listed:
                problems.append(f"{p}: shard file not listed in manifest.json (left by an interrupted run?)")
        return problems

    def _deep_check(self, index: int) -> list[str]:
        path = self.root / shard_name(index)
        try:
            cols = ShardColumns(pq.read_table(path))
            samples = self._shards[index]["samples"]
            bad = [t for t, v in samples.items() if scene_hash(cols.scene(int(v["row"]))) != v["hash"]]
        except (OSError, pa.ArrowException, RowDecodeError) as e:
            return [f"{path}: rows do not decode ({e})"]
        return [f"{path}: content hash mismatch for {len(bad)} samples, e.g. {bad[0]}"] if bad else []
