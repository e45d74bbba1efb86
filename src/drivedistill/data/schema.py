"""Row encoding of a `Scene` for the SceneStore's Parquet shards (schema version 2).

One row per sample. Images are PNG bytes; arrays are flat lists plus a `<name>_shape` column; the map
is nested lists (one flat x0, y0, x1, y1, ... list per polyline/polygon). Privileged columns are null
when a sample carries no privileged part. The full column list is documented in docs/data-format.md.

- `scene_to_row(scene, split)`  Scene → dict of plain Python / bytes values (one Parquet row)
- `ShardColumns(table)`         decodes rows of a pyarrow Table back into validated `Scene`s, using the
                                list offsets directly (no per-float Python conversion)
- `scene_hash(scene)`           sha256 of the sample's decoded content (the cache key of later stages)

Version 2 (this one): `bev_png` holds the students' LiDAR BEV histogram (2 channels, world/lidar.py);
the labelled BEV raster moved to the privileged column `labelled_bev_png`; `event` holds the sample's
event family. A version-1 store is refused by the SceneStore with "re-collect the store".
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from drivedistill.types import AgentInput, MapGeometry, Privileged, Scene

SCHEMA_VERSION = 2
PNG_COMPRESS_LEVEL = (
    6  # zlib level; on rendered frames levels 1..6 encode equally fast (~3.5 ms, 128x256) and 6 is smallest
)

# numeric arrays stored as flat lists + shape, with their numpy dtype on decode
AGENT_ARRAYS: dict[str, str] = {"ego_history": "float32", "ego_status": "float32"}
PRIVILEGED_ARRAYS: dict[str, str] = {
    "future_trajectory": "float32",
    "future_valid": "bool",
    "future_ego_status": "float32",
    "agents": "float32",
    "agents_valid": "bool",
}
MAP_POLYLINES = ("lanes", "lane_polygons", "drivable_polygons", "intersection_polygons")

_LIST = {"float32": pa.list_(pa.float32()), "bool": pa.list_(pa.bool_())}
_SHAPE = pa.list_(pa.int32())

SCHEMA = pa.schema(
    [
        ("token", pa.string()),
        ("episode", pa.string()),
        ("frame_index", pa.int32()),
        ("split", pa.string()),
        ("scenario", pa.string()),
        ("event", pa.string()),
        ("command", pa.int8()),
        ("speed", pa.float32()),
        ("meta_json", pa.string()),
        ("camera_png", pa.binary()),
        ("bev_png", pa.binary()),
        ("bev_shape", _SHAPE),
        *[f for name, dt in AGENT_ARRAYS.items() for f in ((name, _LIST[dt]), (f"{name}_shape", _SHAPE))],
        ("has_privileged", pa.bool_()),
        ("future_frames_png", pa.list_(pa.binary())),
        ("labelled_bev_png", pa.binary()),
        *[
            f
            for name, dt in PRIVILEGED_ARRAYS.items()
            for f in ((name, _LIST[dt]), (f"{name}_shape", _SHAPE))
        ],
        *[(f"map_{name}", pa.list_(pa.list_(pa.float32()))) for name in MAP_POLYLINES],
        ("map_lane_on_route", pa.list_(pa.bool_())),
        ("map_route", pa.list_(pa.float32())),
    ]
)


class RowDecodeError(ValueError):
    """A stored row cannot be turned back into a Scene (the message names the token and column)."""


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 grayscale → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → uint8 array (H, W, 3) for RGB, (H, W) for grayscale."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def encode_bev(bev: np.ndarray) -> bytes:
    """(Hb, Wb, C) uint8 → one grayscale PNG of the C channel planes stacked vertically, (C·Hb, Wb)."""
    h, w, c = bev.shape
    return encode_png(np.ascontiguousarray(bev.transpose(2, 0, 1)).reshape(c * h, w))


def decode_bev(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `encode_bev`: PNG bytes + (Hb, Wb, C) → (Hb, Wb, C) uint8."""
    h, w, c = shape
    planes = decode_png(data)
    if planes.shape != (c * h, w):
        raise RowDecodeError(f"bev_png: decoded {planes.shape}, expected {(c * h, w)} for bev_shape {shape}")
    return np.ascontiguousarray(planes.reshape(c, h, w).transpose(1, 2, 0))


def _json_meta(scene: Scene) -> str:
    try:
        return json.dumps(scene.meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Scene {scene.token}: meta must be JSON-serialisable (str, int, float, bool, lists, dicts): {e}"
        ) from None


def scene_to_row(scene: Scene, split: str) -> dict[str, Any]:
    """One Parquet row (a dict matching `SCHEMA`) for `scene`, assigned to `split`."""
    ai, pv = scene.agent_input, scene.privileged
    row: dict[str, Any] = {
        "token": scene.token,
        "episode": scene.episode,
        "frame_index": int(scene.frame_index),
        "split": split,
        "scenario": pv.scenario if pv is not None else str(scene.meta.get("scenario", "")),
        "event": pv.event if pv is not None else "",
        "command": int(ai.command),
        "speed": float(ai.ego_status[0]),
        "meta_json": _json_meta(scene),
        "camera_png": encode_png(ai.camera),
        "bev_png": encode_bev(ai.bev),
        "bev_shape": list(ai.bev.shape),
        "has_privileged": pv is not None,
    }
    for name in AGENT_ARRAYS:
        arr = getattr(ai, name)
        row[name], row[f"{name}_shape"] = arr.ravel().tolist(), list(arr.shape)
    for name in PRIVILEGED_ARRAYS:
        arr = getattr(pv, name) if pv is not None else None
        row[name] = None if arr is None else arr.ravel().tolist()
        row[f"{name}_shape"] = None if arr is None else list(arr.shape)
    row["future_frames_png"] = None if pv is None else [encode_png(f) for f in pv.future_frames]
    row["labelled_bev_png"] = None if pv is None or pv.labelled_bev is None else encode_bev(pv.labelled_bev)
    for name in MAP_POLYLINES:
        row[f"map_{name}"] = None if pv is None else [p.ravel().tolist() for p in getattr(pv.map, name)]
    row["map_lane_on_route"] = None if pv is None else pv.map.lane_on_route.tolist()
    row["map_route"] = None if pv is None else pv.map.route.ravel().tolist()
    return row


def scene_hash(scene: Scene) -> str:
    """sha256 (hex) of a sample's decoded content: ids, meta, every array's dtype/shape/bytes, the map.

    Computed from arrays (not PNG bytes), so it does not depend on the PNG encoder's settings.
    """
    h = hashlib.sha256()

    def add(tag: str, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr)
        h.update(f"{tag}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())

    h.update(f"{scene.token}|{scene.episode}|{scene.frame_index}|{_json_meta(scene)}|".encode())
    ai, pv = scene.agent_input, scene.privileged
    for name in ("camera", "bev", *AGENT_ARRAYS):
        add(name, getattr(ai, name))
    h.update(f"command:{int(ai.command)};".encode())
    if pv is not None:
        h.update(f"scenario:{pv.scenario};event:{pv.event};".encode())
        if pv.labelled_bev is not None:
            add("labelled_bev", pv.labelled_bev)
        for name in ("future_frames", *PRIVILEGED_ARRAYS):
            add(name, getattr(pv, name))
        for name in MAP_POLYLINES:
            for i, p in enumerate(getattr(pv.map, name)):
                add(f"{name}[{i}]", p.astype(np.float32))
        add("lane_on_route", pv.map.lane_on_route)
        add("route", pv.map.route.astype(np.float32))
    return h.hexdigest()


class _ListColumn:
    """A list<T> column as numpy values + offsets: row i = values[offsets[i]:offsets[i + 1]]."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        arr = column.combine_chunks()
        self.valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.flatten()
        # nested list<list<float>>: keep the inner offsets too
        self.inner: _ListColumn | None = None
        if pa.types.is_list(self.values.type):
            self.inner = _ListColumn(pa.chunked_array([self.values]))
            self.np_values = None
        else:
            self.np_values = self.values.to_numpy(zero_copy_only=False)

    def row(self, i: int) -> np.ndarray:
        assert self.np_values is not None
        return self.np_values[self.offsets[i] : self.offsets[i + 1]]

    def nested(self, i: int) -> list[np.ndarray]:
        assert self.inner is not None
        return [self.inner.row(j) for j in range(self.offsets[i], self.offsets[i + 1])]


class ShardColumns:
    """Decoded column views of one shard's table; `scene(i)` builds a validated `Scene` for row i."""

    def __init__(self, table: pa.Table) -> None:
        missing = [n for n in SCHEMA.names if n not in table.column_names]
        if missing:
            raise RowDecodeError(
                f"missing columns {missing}: this code reads schema version {SCHEMA_VERSION} "
                "(v2 moved the labelled BEV to `labelled_bev_png`, the LiDAR BEV is `bev_png`); re-collect the store"
            )
        self.num_rows = table.num_rows
        self.scalars = {
            n: table.column(n).to_pylist()
            for n in (
                "token",
                "episode",
                "frame_index",
                "scenario",
                "event",
                "command",
                "meta_json",
                "has_privileged",
            )
        }
        self.blobs = {
            n: table.column(n).to_pylist()
            for n in ("camera_png", "bev_png", "future_frames_png", "labelled_bev_png")
        }
        self.lists = {
            n: _ListColumn(table.column(n))
            for n in SCHEMA.names
            if pa.types.is_list(SCHEMA.field(n).type) and n != "future_frames_png"
        }

    def _array(self, i: int, name: str, dtype: str) -> np.ndarray:
        shape = tuple(int(s) for s in self.lists[f"{name}_shape"].row(i))
        return self.lists[name].row(i).astype(dtype, copy=True).reshape(shape)

    def _labelled_bev(self, i: int, bev_shape: tuple[int, int, int]) -> np.ndarray | None:
        blob = self.blobs["labelled_bev_png"][i]
        return None if blob is None else decode_bev(blob, (bev_shape[0], bev_shape[1], 3))

    def scene(self, i: int, with_privileged: bool = True) -> Scene:
        """Row i as a `Scene` (validated by the types); `with_privileged=False` skips decoding the rest."""
        s = self.scalars
        token = s["token"][i]
        try:
            bev_shape = tuple(int(v) for v in self.lists["bev_shape"].row(i))
            ai = AgentInput(
                camera=decode_png(self.blobs["camera_png"][i]),
                bev=decode_bev(self.blobs["bev_png"][i], bev_shape),  # type: ignore[arg-type]
                ego_history=self._array(i, "ego_history", "float32"),
                ego_status=self._array(i, "ego_status", "float32"),
                command=int(s["command"][i]),
            )
            priv = None
            if with_privileged and s["has_privileged"][i]:
                lists = self.lists
                geo = {
                    n: [p.astype(np.float32).reshape(-1, 2) for p in lists[f"map_{n}"].nested(i)]
                    for n in MAP_POLYLINES
                }
                priv = Privileged(
                    future_frames=np.stack([decode_png(b) for b in self.blobs["future_frames_png"][i]]),
                    map=MapGeometry(
                        **geo,
                        lane_on_route=lists["map_lane_on_route"].row(i).astype(bool, copy=True),
                        route=lists["map_route"].row(i).astype(np.float32, copy=True).reshape(-1, 2),
                    ),
                    scenario=s["scenario"][i],
                    labelled_bev=self._labelled_bev(i, bev_shape),  # type: ignore[arg-type]
                    event=s["event"][i] or "",
                    **{n: self._array(i, n, dt) for n, dt in PRIVILEGED_ARRAYS.items()},  # type: ignore[arg-type]
                )
            meta = json.loads(s["meta_json"][i])
        except (ValueError, OSError, KeyError, IndexError) as e:
            raise RowDecodeError(f"sample {token}: {e}") from e
        return Scene(token, s["episode"][i], int(s["frame_index"][i]), ai, priv, meta)
