"""Store repair (#21 6b): a shard whose bytes no longer match the manifest is never adopted — collection
re-writes it — and `data validate` reports it, also when its embedded Parquet metadata still matches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from drivedistill.data.cli import main as data_main
from drivedistill.data.store import SceneStore, SceneStoreWriter, shard_name, write_shard
from tests.test_store_integrity import CONFIG, _shard_scenes, _write_all


def _poison(path: Path) -> None:
    """Rewrite one value of the shard with NaN, keeping its schema and embedded drivedistill metadata."""
    table = pq.read_table(path)
    col = table.column("ego_status").to_pylist()
    col[0] = [float("nan"), *col[0][1:]]
    i = table.schema.get_field_index("ego_status")
    table = table.set_column(i, table.schema.field(i), pa.array(col, table.schema.field(i).type))
    pq.write_table(table, path)


def test_repair_recollects_a_shard_that_does_not_match_the_manifest(tmp_path: Path) -> None:
    _write_all(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    _poison(tmp_path / shard_name(1))
    assert data_main(["validate", str(tmp_path)]) == 1  # caught before any repair

    writer = SceneStoreWriter(tmp_path, CONFIG, num_shards=3)
    assert writer.completed() == {0, 2}  # shard 1 is to be collected again, not adopted
    after = json.loads((tmp_path / "manifest.json").read_text())
    # the manifest never takes the corrupt file's hash
    assert {s["sha256"] for s in after["shards"]} <= {s["sha256"] for s in manifest["shards"]}
    assert data_main(["validate", str(tmp_path)]) == 1  # still not valid until the shard is rewritten
    writer.add_shard(
        write_shard(tmp_path, 1, _shard_scenes(1), val_fraction=0.2, config_hash=writer.config_hash)
    )
    writer.finish()
    assert SceneStore(tmp_path).validate(deep=True) == []


def test_an_unrecorded_shard_is_adopted_only_when_its_content_hashes_match(tmp_path: Path) -> None:
    writer = SceneStoreWriter(tmp_path, CONFIG, num_shards=2)
    writer.add_shard(
        write_shard(tmp_path, 0, _shard_scenes(0), val_fraction=0.2, config_hash=writer.config_hash)
    )
    # shard 1 written, then the process died before the manifest update; then the file was damaged
    write_shard(tmp_path, 1, _shard_scenes(1), val_fraction=0.2, config_hash=writer.config_hash)
    _poison(tmp_path / shard_name(1))
    assert SceneStoreWriter(tmp_path, CONFIG, num_shards=2).completed() == {0}
