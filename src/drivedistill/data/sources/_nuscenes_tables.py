"""Writer of a dataset in the nuScenes table format (the 13 JSON tables + map mask), for fixtures and
for exporting the default world (`nuscenes_export.py`). Tokens are 32-hex md5 digests of their keys, so
an export is byte-for-byte reproducible. nuscenes-devkit loads what this writes (tests cross-check).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drivedistill.data.sources.nuscenes import TABLES

VISIBILITY = [("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]


def token(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def quaternion_wxyz(T: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
    return [float(w), float(x), float(y), float(z)]


class NuScenesTableWriter:
    """Accumulates records; `write()` writes ROOT/VERSION/*.json and ROOT/maps/<mask>.png."""

    def __init__(self, root: str | Path, version: str) -> None:
        self.root, self.version = Path(root), version
        self.t: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        self.t["visibility"] = [{"token": k, "level": lvl, "description": lvl} for k, lvl in VISIBILITY]
        self._idx: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_sd: dict[tuple[str, str], dict[str, Any]] = {}  # (scene, channel) → previous sample_data
        self._last_ann: dict[str, dict[str, Any]] = {}

    def _add(self, table: str, rec: dict[str, Any]) -> dict[str, Any]:
        self.t[table].append(rec)
        self._idx[(table, rec["token"])] = rec
        return rec

    def category(self, name: str) -> str:
        tok = token("category", name)
        if ("category", tok) not in self._idx:
            self._add(
                "category",
                {"token": tok, "name": name, "description": name, "index": len(self.t["category"])},
            )
        return tok

    def log(self, name: str, location: str, date: str, vehicle: str = "drivedistill") -> str:
        tok = token("log", name)
        self._add(
            "log",
            {"token": tok, "logfile": name, "vehicle": vehicle, "date_captured": date, "location": location},
        )
        return tok

    def sensor(self, channel: str, modality: str) -> str:
        tok = token("sensor", channel)
        if ("sensor", tok) not in self._idx:
            self._add("sensor", {"token": tok, "channel": channel, "modality": modality})
        return tok

    def calibrated_sensor(
        self, key: str, channel: str, modality: str, T: np.ndarray, K: np.ndarray | None
    ) -> str:
        tok = token("calibrated_sensor", key, channel)
        if ("calibrated_sensor", tok) not in self._idx:
            self._add(
                "calibrated_sensor",
                {
                    "token": tok,
                    "sensor_token": self.sensor(channel, modality),
                    "translation": [float(v) for v in T[:3, 3]],
                    "rotation": quaternion_wxyz(T),
                    "camera_intrinsic": [] if K is None else np.asarray(K, float).tolist(),
                },
            )
        return tok

    def ego_pose(self, key: str, T: np.ndarray, timestamp: int) -> str:
        tok = token("ego_pose", key)
        self._add(
            "ego_pose",
            {
                "token": tok,
                "timestamp": int(timestamp),
                "rotation": quaternion_wxyz(T),
                "translation": [float(v) for v in T[:3, 3]],
            },
        )
        return tok

    def scene(self, name: str, log_token: str, description: str = "") -> str:
        tok = token("scene", name)
        self._add(
            "scene",
            {
                "token": tok,
                "log_token": log_token,
                "nbr_samples": 0,
                "first_sample_token": "",
                "last_sample_token": "",
                "name": name,
                "description": description,
            },
        )
        return tok

    def sample(self, scene_token: str, timestamp: int, tok: str | None = None) -> str:
        scene = self._idx[("scene", scene_token)]
        tok = tok or token("sample", scene_token, timestamp)
        prev = scene["last_sample_token"]
        self._add(
            "sample",
            {"token": tok, "timestamp": int(timestamp), "prev": prev, "next": "", "scene_token": scene_token},
        )
        if prev:
            self._idx[("sample", prev)]["next"] = tok
        else:
            scene["first_sample_token"] = tok
        scene["last_sample_token"] = tok
        scene["nbr_samples"] += 1
        return tok

    def sample_data(
        self,
        sample_token: str,
        channel: str,
        ego_pose_token: str,
        calibrated_sensor_token: str,
        timestamp: int,
        filename: str,
        size: tuple[int, int] = (0, 0),
        tok: str | None = None,
    ) -> str:
        scene_token = self._idx[("sample", sample_token)]["scene_token"]
        tok = tok or token("sample_data", sample_token, channel)
        prev = self._last_sd.get((scene_token, channel))
        rec = {
            "token": tok,
            "sample_token": sample_token,
            "ego_pose_token": ego_pose_token,
            "calibrated_sensor_token": calibrated_sensor_token,
            "timestamp": int(timestamp),
            "fileformat": filename.rsplit(".", 1)[-1] if not filename.endswith(".pcd.bin") else "pcd",
            "is_key_frame": True,
            "height": int(size[1]),
            "width": int(size[0]),
            "filename": filename,
            "prev": prev["token"] if prev else "",
            "next": "",
        }
        if prev:
            prev["next"] = tok
        self._last_sd[(scene_token, channel)] = self._add("sample_data", rec)
        return tok

    def annotation(
        self,
        sample_token: str,
        instance_key: str,
        category: str,
        T_global_box: np.ndarray,
        size_wlh: tuple[float, float, float],
        num_lidar_pts: int = 1,
    ) -> str:
        inst_tok = token("instance", instance_key)
        tok = token("sample_annotation", sample_token, instance_key)
        prev = self._last_ann.get(inst_tok)
        rec = {
            "token": tok,
            "sample_token": sample_token,
            "instance_token": inst_tok,
            "visibility_token": "4",
            "attribute_tokens": [],
            "translation": [float(v) for v in T_global_box[:3, 3]],
            "size": [float(v) for v in size_wlh],
            "rotation": quaternion_wxyz(T_global_box),
            "prev": prev["token"] if prev else "",
            "next": "",
            "num_lidar_pts": int(num_lidar_pts),
            "num_radar_pts": 0,
        }
        if prev:
            prev["next"] = tok
            inst = self._idx[("instance", inst_tok)]
            inst["last_annotation_token"] = tok
            inst["nbr_annotations"] += 1
        else:
            self._add(
                "instance",
                {
                    "token": inst_tok,
                    "category_token": self.category(category),
                    "nbr_annotations": 1,
                    "first_annotation_token": tok,
                    "last_annotation_token": tok,
                },
            )
        self._last_ann[inst_tok] = self._add("sample_annotation", rec)
        return tok

    def write(self, map_name: str = "drivedistill-map") -> Path:
        """Write the 13 tables and a one-record map table covering every log (with a 16 × 16 mask PNG)."""
        folder = self.root / self.version
        folder.mkdir(parents=True, exist_ok=True)
        mask = Path("maps") / f"{token('map', map_name)}.png"
        (self.root / "maps").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(self.root / mask)
        self.t["map"] = [
            {
                "token": token("map", map_name),
                "log_tokens": [r["token"] for r in self.t["log"]],
                "category": "semantic_prior",
                "filename": str(mask),
            }
        ]
        for name in TABLES:
            (folder / f"{name}.json").write_text(json.dumps(self.t[name], indent=0))
        return folder
