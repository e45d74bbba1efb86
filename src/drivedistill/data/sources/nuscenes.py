"""nuScenes (v1.0-mini / v1.0-trainval) → Scenes (camera, LiDAR BEV, boxes), read from the JSON tables.

Layout read (what the nuScenes download unpacks to; see docs/nuscenes.md):

    ROOT/v1.0-mini/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,
                    sample_annotation,sample_data,scene,sensor,visibility}.json     (all 13 required)
    ROOT/samples/CAM_FRONT/*.jpg, ROOT/samples/LIDAR_TOP/*.pcd.bin                 (keyframe files)
    ROOT/can_bus/scene-XXXX_pose.json                                              (optional expansion)
    ROOT/maps/expansion/<location>.json   map expansion v1.3 (optional; nuscenes_map.py reads it)
    ROOT/drivedistill_splits.json   official scene splits, written by nuscenes-devkit's
                                    `create_splits_scenes` (`make nuscenes-splits NUSCENES_ROOT=ROOT`)

Frames (every conversion happens here, in the functions named after it):
    global   nuScenes world frame (map-aligned, metres)
    ego      nuScenes ego frame of a keyframe: rear-axle centre on the ground, x forward, y left, z up —
             the project's "current ego frame" (types.py) with the **rear axle** as reference point
    lidar    LIDAR_TOP: x right, y forward, z up (calibrated_sensor gives T_ego_lidar)
    camera   x right, y down, z forward (calibrated_sensor gives T_ego_cam and the intrinsics K)
`global_to_ego`, `global_pose_to_ego`, `lidar_to_ego`, `ego_to_camera` and, for the 2-D map,
nuscenes_map.py's `global_xy_to_ego` (yaw-only) are the only places that convert; a sample's ego frame
is its LIDAR_TOP keyframe's ego pose (the nuScenes convention for "the sample's pose").

Per keyframe sample (2 Hz) of a scene, a `Scene`:
    camera       CAM_FRONT (default) or the six cameras as a 2 × 3 mosaic (front-left, front, front-right /
                 back-left, back, back-right), each cropped to `crop` (left, top, right, bottom in source
                 pixels) then resized to image_width × image_height (JPEG draft decoding for speed)
    bev          LiDAR BEV from the keyframe LIDAR_TOP sweep (`lidar_bev`): the world's 2-channel height
                 histogram (world/lidar.py `splat`: returns 0.2–1 m / ≥ 1 m above the ground, 5 per cell
                 saturate) on the same `BevConfig` grid, centred on the ego frame's origin (the rear axle
                 here), after removing the ego's own returns and the ground (data/sources/lidar.py;
                 `ground`: local ground estimate for real sweeps, flat for the world's export)
    ego_history  poses of the 4 previous keyframes (held at the scene's first pose where the scene starts
                 later; meta "history_padded" counts them)
    ego_status   speed, longitudinal acceleration, yaw rate: CAN bus `pose` messages (vel[0], accel[0],
                 rotation_rate[2], interpolated at the keyframe time) when ROOT/can_bus has the scene, else
                 finite differences of the LIDAR_TOP ego poses (meta "ego_status_source": can_bus | poses)
    command      the rule VAD (tools/data_converter/vad_nuscenes_converter.py), UniAD
                 (data_utils/trajectory_api.py `get_sdc_planning_label`) and ST-P3 (NuscenesData.py
                 `get_gt_trajectory`) share, each read: the LIDAR_TOP sensor position at +3 s (6 keyframes;
                 the last valid one past the scene's end, as UniAD) in the current LiDAR frame; x ≥ 2 m →
                 RIGHT, x ≤ -2 m → LEFT, else STRAIGHT (ST-P3 never evaluates a sample without 3 s of
                 future, so the end-of-scene case is UniAD's and VAD's)
    privileged   future ego poses at the next 8 keyframes (valid where the scene has them), future ego
                 status, front-camera frames at +1/+2/+3 s (last frame repeated past the end), agent boxes
                 at t = 0 … 4 s (annotations of the keyframes, tracked by instance; velocity by central
                 differences of the instance's neighbouring annotations, as the devkit's box_velocity),
                 the map (`MapGeometry`, from the map expansion of the log's location when present, in a
                 square of ± map_radius around the ego: drivable area, lanes + connectors with their
                 centrelines, intersections, on-route lanes and the route along the lanes the logged ego
                 drives until the scene's end — nuscenes_map.py), the labelled BEV (`labelled_bev`:
                 world/bev.py's raster — drivable area (ch 0), lane/road dividers (ch 1), t = 0 boxes (ch 2))
Without the map expansion file the map is empty, channels 0/1 stay empty, meta "map" names the missing file
and `metric_scenes_of` (PDMS) refuses with that file and the fix. MetricScenes: `metric_scene_of` (the same
Scene, rear-axle frame, nuScenes ego geometry); no traffic-light states (TLC = 1), no ego history (HC = 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drivedistill.config import check
from drivedistill.data.sources.av2 import EgoTrack
from drivedistill.data.sources.base import Source, SourceError
from drivedistill.data.sources.lidar import GROUND_MODES, sweep_bev
from drivedistill.data.sources.nuscenes_map import NuScenesMap, global_xy_to_ego, map_path
from drivedistill.geometry.metric_scene import MetricScene, metric_scene_from_scene
from drivedistill.geometry.planar import resample_polyline
from drivedistill.registry import register
from drivedistill.types import (
    FUTURE_FRAME_STEPS,
    NUM_AGENT_STEPS,
    NUM_FUTURE,
    NUM_PAST,
    AgentClass,
    AgentInput,
    Command,
    MapGeometry,
    Privileged,
    Scene,
)
from drivedistill.world.bev import BevConfig, render_bev
from drivedistill.world.lidar import LIDAR_CHANNELS

VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")
TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
SPLITS_OF_VERSION = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val", "train_detect", "train_track"),
    "v1.0-test": ("test",),
}
CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
SPLITS_FILE = "drivedistill_splits.json"
# Renault Zoe as the open-loop metric models it (metrics/occupancy.py: 4.084 × 1.85 m, box centre 0.5 m
# ahead of the rear axle): width, front and rear length from the rear axle, wheelbase [m]
NUSCENES_EGO = (1.85, 4.084 / 2 + 0.5, 4.084 / 2 - 0.5, 2.588)
COMMAND_THRESHOLD = 2.0  # [m] lateral LiDAR offset at +3 s (VAD, UniAD, ST-P3)
MAP_MODES = ("auto", "require", "off")


def category_class(name: str) -> AgentClass:
    """nuScenes category → AgentClass. vehicle.bicycle/motorcycle → BICYCLE, other vehicle.* → VEHICLE,
    human.pedestrian.* → PEDESTRIAN, everything else (movable_object.*, static_object.*, animal) →
    STATIC: the ST-P3 occupancy holds vehicle.* and human.pedestrian.* only."""
    if name.startswith(("vehicle.bicycle", "vehicle.motorcycle")):
        return AgentClass.BICYCLE
    if name.startswith("vehicle."):
        return AgentClass.VEHICLE
    if name.startswith("human.pedestrian"):
        return AgentClass.PEDESTRIAN
    return AgentClass.STATIC


@dataclass
class NuScenesConfig:
    """Where the dataset is, which scenes, and how sensors are rendered (see the module docstring)."""

    root: str = ""
    version: str = "v1.0-mini"
    split: str = ""  # "" = every scene of the version; else an official split of the version
    splits_file: str = ""  # default ROOT/drivedistill_splits.json
    scenes: list[str] = field(default_factory=list)  # scene names (further restricts the split)
    cameras: list[str] = field(default_factory=lambda: ["CAM_FRONT"])  # ["CAM_FRONT"] or the six CAMERAS
    image_width: int = field(default=256, metadata=check(ge=8))  # [px] per camera
    image_height: int = field(default=128, metadata=check(ge=8))  # [px] per camera
    # left, top, right, bottom [source px]
    crop: tuple[int, int, int, int] = field(default=(0, 50, 1600, 850), metadata=check(ge=0))
    can_bus: str = "auto"  # auto: CAN bus when present, else poses | require | off (poses)
    lidar: bool = True  # False: zero BEV (meta "absent")
    ground: str = "local"  # ground removal of the sweep (data/sources/lidar.py): local | flat
    bev: BevConfig = field(default_factory=BevConfig)
    # map expansion (ROOT/maps/expansion/<location>.json): auto = read when present | require | off
    map: str = "auto"
    map_radius: float = field(default=64.0, metadata=check(ge=10))  # [m] half size of the square map window

    def __post_init__(self) -> None:
        if self.map not in MAP_MODES:
            raise SourceError(f"nuscenes.map: {self.map!r}; use auto, require or off")
        if self.version not in VERSIONS:
            raise SourceError(f"nuscenes.version: unknown {self.version!r}; versions are {list(VERSIONS)}")
        if self.split and self.split not in SPLITS_OF_VERSION[self.version]:
            raise SourceError(
                f"nuscenes.split: {self.split!r} is not a split of {self.version}; "
                f"choose one of {list(SPLITS_OF_VERSION[self.version])} (or none for every scene)"
            )
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad or self.cameras not in (["CAM_FRONT"], list(CAMERAS)):
            raise SourceError(
                f"nuscenes.cameras: {self.cameras} — use [CAM_FRONT] or all six {list(CAMERAS)} (2 × 3 mosaic)"
            )
        if self.ground not in GROUND_MODES:
            raise SourceError(
                f"nuscenes.ground: {self.ground!r}; use local (real sweeps) or flat (ground already removed)"
            )
        if self.can_bus not in ("auto", "require", "off"):
            raise SourceError(f"nuscenes.can_bus: {self.can_bus!r}; use auto, require or off")
        left, top, right, bottom = self.crop
        if not (0 <= left < right and 0 <= top < bottom):
            raise SourceError(f"nuscenes.crop: {self.crop} is not a (left, top, right, bottom) box")
        if self.image_width < 8 or self.image_height < 8:
            raise SourceError(
                f"nuscenes.image_width/height: at least 8 px, got {self.image_width}x{self.image_height}"
            )


# ----- frames --------------------------------------------------------------------------------------
def pose_matrix(translation: list[float], rotation_wxyz: list[float]) -> np.ndarray:
    """4 × 4 transform from a nuScenes record (translation [m], quaternion w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = rotation_wxyz
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    T[:3, 3] = translation
    return T


def global_to_ego(T_global_ego: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Global points (N, 3) → the ego frame whose pose in the global frame is T_global_ego."""
    T = np.linalg.inv(T_global_ego)
    return np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]


def global_pose_to_ego(T_global_ego: np.ndarray, T_global_x: np.ndarray) -> np.ndarray:
    """(x, y, yaw) in the ego frame of a body whose global pose is T_global_x (4 × 4)."""
    T = np.linalg.inv(T_global_ego) @ T_global_x
    return np.array([T[0, 3], T[1, 3], np.arctan2(T[1, 0], T[0, 0])])


def lidar_to_ego(T_ego_lidar: np.ndarray, points: np.ndarray) -> np.ndarray:
    """LIDAR_TOP points (N, 3) (x right, y forward) → ego frame (x forward, y left)."""
    return np.asarray(points, np.float64) @ T_ego_lidar[:3, :3].T + T_ego_lidar[:3, 3]


def ego_to_camera(
    T_ego_cam: np.ndarray, K: np.ndarray, points_ego: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ego points (N, 3) → pixels (N, 2) of the full-resolution image and depth (N,) [m] along the axis."""
    T = np.linalg.inv(T_ego_cam)
    pc = np.asarray(points_ego, np.float64) @ T[:3, :3].T + T[:3, 3]
    uvw = pc @ K.T
    return uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-6), pc[:, 2]


# ----- tables --------------------------------------------------------------------------------------
class NuScenesTables:
    """The 13 JSON tables of one version, indexed by token (no nuscenes-devkit needed)."""

    def __init__(self, root: str | Path, version: str) -> None:
        self.root = Path(root)
        if not str(root) or not self.root.is_dir():
            raise SourceError(
                f"{self.root}: nuScenes root not found; pass --root DIR (the directory holding {version}/)"
            )
        if version not in VERSIONS:
            raise SourceError(f"unknown nuScenes version {version!r}; versions are {list(VERSIONS)}")
        folder = self.root / version
        if not folder.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.name.startswith("v1.0"))
            raise SourceError(
                f"{folder}: not found (found {found}); pass the --version you downloaded or fix --root"
            )
        self.version = version
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        for name in TABLES:
            path = folder / f"{name}.json"
            if not path.exists():
                raise SourceError(
                    f"{path}: missing table; a nuScenes version folder holds all 13 tables "
                    f"({', '.join(TABLES)}) — re-extract the {version} metadata archive"
                )
            try:
                rows = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}: invalid JSON ({e}); re-extract the {version} metadata") from None
            self.tables[name] = {r["token"]: r for r in rows}
        self.channel = {
            cs: self.tables["sensor"][rec["sensor_token"]]["channel"]
            for cs, rec in self.tables["calibrated_sensor"].items()
        }
        self.keyframe: dict[tuple[str, str], dict[str, Any]] = {}
        self.lidar_by_sample: dict[str, list[dict[str, Any]]] = {}
        for sd in self.tables["sample_data"].values():
            ch = self.channel[sd["calibrated_sensor_token"]]
            if sd["is_key_frame"]:
                self.keyframe[(sd["sample_token"], ch)] = sd
            if ch == "LIDAR_TOP":
                self.lidar_by_sample.setdefault(sd["sample_token"], []).append(sd)
        self.scene_by_name = {s["name"]: s for s in self.tables["scene"].values()}

    def get(self, table: str, token: str) -> dict[str, Any]:
        try:
            return self.tables[table][token]
        except KeyError:
            raise SourceError(
                f"{self.root / self.version / (table + '.json')}: no record with token {token!r} (tables inconsistent)"
            ) from None

    def scene_samples(self, scene: dict[str, Any]) -> list[dict[str, Any]]:
        out, token = [], scene["first_sample_token"]
        while token:
            s = self.get("sample", token)
            out.append(s)
            token = s["next"]
        return out

    def sample_data(self, sample_token: str, channel: str) -> dict[str, Any]:
        sd = self.keyframe.get((sample_token, channel))
        if sd is None:
            raise SourceError(
                f"{self.root / self.version / 'sample_data.json'}: sample {sample_token} has no {channel} keyframe"
            )
        return sd


@dataclass
class NuScenesSample:
    """One keyframe's parsed records (poses as 4 × 4 transforms)."""

    token: str
    timestamp: int  # [µs]
    T_global_ego: np.ndarray  # LIDAR_TOP keyframe's ego pose
    T_ego_lidar: np.ndarray
    lidar_path: Path
    cameras: dict[
        str, tuple[Path, np.ndarray, np.ndarray, np.ndarray]
    ]  # channel → path, K, T_ego_cam, T_global_ego
    boxes: list[dict[str, Any]]  # instance, category, T_global_box, size (l, w), velocity_global (2,)


@dataclass
class NuScenesEpisode:
    """The parsed records of one scene."""

    name: str
    location: str
    samples: list[NuScenesSample]
    ego_track: EgoTrack  # LIDAR_TOP ego poses of the scene (keyframes + sweeps in the tables), global
    can: dict[str, np.ndarray] | None  # utime [µs], speed, accel, yaw_rate (CAN bus pose messages)
    map: NuScenesMap | None = None  # the location's map expansion (None: absent or map=off)
    map_file: str = ""  # ROOT/maps/expansion/<location>.json (read or looked for)


class NuScenesSource(Source[NuScenesEpisode]):
    """The scenes of a nuScenes version / split (see the module docstring)."""

    name = "nuscenes"
    sensors = ("camera", "lidar_bev", "ego_status")
    privileged = ("labelled_bev",)

    def __init__(self, cfg: NuScenesConfig) -> None:
        self.cfg = cfg
        self.db = NuScenesTables(cfg.root, cfg.version)
        names = sorted(self.db.scene_by_name)
        if cfg.split:
            wanted = self._split_scenes()
            names = [n for n in names if n in wanted]
            if not names:
                raise SourceError(
                    f"split {cfg.split!r} has no scene in {self.db.root / cfg.version / 'scene.json'}; "
                    "is --version right for this split?"
                )
        if cfg.scenes:
            unknown = sorted(set(cfg.scenes) - set(names))
            if unknown:
                raise SourceError(
                    f"nuscenes.scenes: {unknown} not in {cfg.version} (split {cfg.split or 'all'})"
                )
            names = [n for n in names if n in set(cfg.scenes)]
        self.names = names
        self._maps: dict[str, NuScenesMap | None] = {}
        self._last_local: tuple[tuple[str, int], Any] | None = None  # local_map memo (Scene + MetricScene)

    def map_of(self, location: str) -> NuScenesMap | None:
        """The location's map expansion, parsed once per source (None when absent under map=auto or off)."""
        if self.cfg.map == "off":
            return None
        if location not in self._maps:
            path = map_path(self.db.root, location)
            if not path.exists() and self.cfg.map == "auto":
                self._maps[location] = None
            else:  # present, or required: a missing / malformed file is an error naming it and the fix
                self._maps[location] = NuScenesMap(path, resolution=0.5)
        return self._maps[location]

    def _split_scenes(self) -> set[str]:
        path = Path(self.cfg.splits_file) if self.cfg.splits_file else self.db.root / SPLITS_FILE
        if not path.exists():
            raise SourceError(
                f"{path}: no official split file; write it with nuscenes-devkit's create_splits_scenes: "
                f"`make nuscenes-splits NUSCENES_ROOT={self.db.root}` (or pass --source.splits_file=PATH)"
            )
        splits = json.loads(path.read_text())
        if self.cfg.split not in splits:
            raise SourceError(
                f"{path}: has no split {self.cfg.split!r} (has {sorted(splits)}); regenerate it"
            )
        return set(splits[self.cfg.split])

    def episodes(self) -> list[str]:
        return list(self.names)

    def store_config(self) -> dict[str, Any]:
        from drivedistill.config import to_dict

        return {"source": {"name": self.name, **to_dict(self.cfg)}}

    # ----- records ----------------------------------------------------------------------------------
    def load(self, episode: str) -> NuScenesEpisode:
        db = self.db
        scene = db.scene_by_name.get(episode)
        if scene is None:
            raise SourceError(f"{db.root / db.version / 'scene.json'}: no scene named {episode!r}")
        log = db.get("log", scene["log_token"])
        samples = []
        for s in db.scene_samples(scene):
            lid = db.sample_data(s["token"], "LIDAR_TOP")
            cs = db.get("calibrated_sensor", lid["calibrated_sensor_token"])
            ep = db.get("ego_pose", lid["ego_pose_token"])
            cams = {}
            for ch in self.cfg.cameras:
                sd = db.sample_data(s["token"], ch)
                ccs = db.get("calibrated_sensor", sd["calibrated_sensor_token"])
                cep = db.get("ego_pose", sd["ego_pose_token"])
                cams[ch] = (
                    db.root / sd["filename"],
                    np.asarray(ccs["camera_intrinsic"], np.float64),
                    pose_matrix(ccs["translation"], ccs["rotation"]),
                    pose_matrix(cep["translation"], cep["rotation"]),
                )
            boxes = []
            for ann in self._annotations(s["token"]):
                inst = db.get("instance", ann["instance_token"])
                cat = db.get("category", inst["category_token"])["name"]
                w, length, _ = ann["size"]
                boxes.append(
                    {
                        "instance": ann["instance_token"],
                        "category": cat,
                        "T_global_box": pose_matrix(ann["translation"], ann["rotation"]),
                        "size": (float(length), float(w)),
                        "velocity_global": self._velocity(ann),
                        "visibility": ann.get("visibility_token", ""),
                    }
                )
            samples.append(
                NuScenesSample(
                    s["token"],
                    int(s["timestamp"]),
                    pose_matrix(ep["translation"], ep["rotation"]),
                    pose_matrix(cs["translation"], cs["rotation"]),
                    db.root / lid["filename"],
                    cams,
                    boxes,
                )
            )
        lidar_sds = sorted(
            (sd for s in samples for sd in db.lidar_by_sample.get(s.token, [])),
            key=lambda sd: sd["timestamp"],
        )
        poses = []
        for sd in lidar_sds:
            T = pose_matrix(
                *(db.get("ego_pose", sd["ego_pose_token"])[k] for k in ("translation", "rotation"))
            )
            poses.append((sd["timestamp"] * 1e-6, T[0, 3], T[1, 3], np.arctan2(T[1, 0], T[0, 0])))
        arr = np.unique(np.asarray(poses, np.float64), axis=0)
        track = EgoTrack(None, times=arr[:, 0], poses=arr[:, 1:])
        location = str(log.get("location", ""))
        return NuScenesEpisode(
            episode,
            location,
            samples,
            track,
            self._can_bus(episode),
            self.map_of(location) if location else None,
            str(map_path(db.root, location or "<log.location empty>")),
        )

    def _annotations(self, sample_token: str) -> list[dict[str, Any]]:
        if not hasattr(self, "_ann_by_sample"):
            self._ann_by_sample: dict[str, list[dict[str, Any]]] = {}
            for a in self.db.tables["sample_annotation"].values():
                self._ann_by_sample.setdefault(a["sample_token"], []).append(a)
        return self._ann_by_sample.get(sample_token, [])

    def _velocity(self, ann: dict[str, Any], max_dt: float = 1.5) -> np.ndarray:
        """Global (vx, vy) [m/s] by differences of the neighbouring annotations of the instance (0 if none)."""
        db = self.db
        prev = db.tables["sample_annotation"].get(ann["prev"]) if ann["prev"] else None
        nxt = db.tables["sample_annotation"].get(ann["next"]) if ann["next"] else None
        a, b = prev or ann, nxt or ann
        if a is b:
            return np.zeros(2)
        ta = db.get("sample", a["sample_token"])["timestamp"] * 1e-6
        tb = db.get("sample", b["sample_token"])["timestamp"] * 1e-6
        dt = tb - ta
        if dt <= 0 or dt > 2 * max_dt:  # the devkit's box_velocity: NaN past max_dt per step; 0 here
            return np.zeros(2)
        return (np.asarray(b["translation"][:2]) - np.asarray(a["translation"][:2])) / dt

    def _can_bus(self, scene: str) -> dict[str, np.ndarray] | None:
        if self.cfg.can_bus == "off":
            return None
        path = self.db.root / "can_bus" / f"{scene}_pose.json"
        if not path.exists():
            if self.cfg.can_bus == "require":
                raise SourceError(
                    f"{path}: no CAN bus data for {scene} (some nuScenes scenes have none); download the CAN bus "
                    "expansion into ROOT/can_bus, or pass --source.can_bus=auto to use ego poses for this scene"
                )
            return None
        msgs = json.loads(path.read_text())
        if not msgs:
            return None
        return {
            "utime": np.array([m["utime"] for m in msgs], np.float64),
            "speed": np.array([m["vel"][0] for m in msgs], np.float64),
            "accel": np.array([m["accel"][0] for m in msgs], np.float64),
            "yaw_rate": np.array([m["rotation_rate"][2] for m in msgs], np.float64),
        }

    # ----- scenes -----------------------------------------------------------------------------------
    def ego_status(self, ep: NuScenesEpisode, timestamp_us: float) -> tuple[np.ndarray, str]:
        """(speed [m/s], longitudinal acceleration [m/s²], yaw rate [rad/s]) at a time, and its source."""
        if ep.can is not None:
            c = ep.can
            return np.array(
                [np.interp(timestamp_us, c["utime"], c[k]) for k in ("speed", "accel", "yaw_rate")]
            ), "can_bus"
        dyn = (
            ep.ego_track.dynamics(timestamp_us * 1e-6, NUSCENES_EGO[3])
            if len(ep.ego_track.times) > 1
            else np.zeros(4)
        )
        return dyn[[0, 1, 3]], "poses"

    def command(self, ep: NuScenesEpisode, i: int) -> Command:
        """The VAD/UniAD/ST-P3 command: LiDAR position at +3 s (6 keyframes; last repeated) in the current
        LiDAR frame (full 3-D transforms, as all three do)."""
        s = ep.samples[i]
        j = min(i + 6, len(ep.samples) - 1)
        T_global_lidar_future = ep.samples[j].T_global_ego @ ep.samples[j].T_ego_lidar
        T_global_lidar_now = s.T_global_ego @ s.T_ego_lidar
        x_right = (np.linalg.inv(T_global_lidar_now) @ T_global_lidar_future)[0, 3]
        if x_right >= COMMAND_THRESHOLD:
            return Command.RIGHT
        if x_right <= -COMMAND_THRESHOLD:
            return Command.LEFT
        return Command.STRAIGHT

    def camera_image(self, sample: NuScenesSample) -> np.ndarray:
        """(H, W, 3) uint8: the configured camera, or the 2 × 3 mosaic of six (see the module docstring)."""
        tiles = [self._read_image(sample.cameras[ch][0]) for ch in self.cfg.cameras]
        if len(tiles) == 1:
            return tiles[0]
        return np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0)

    def _read_image(self, path: Path) -> np.ndarray:
        if not path.exists():
            raise SourceError(
                f"{path}: image missing; extract the nuScenes samples/ (and sweeps/) archives into {self.db.root}"
            )
        left, top, right, bottom = self.cfg.crop
        with Image.open(path) as img:
            full_w, full_h = img.size
            if right > full_w or bottom > full_h:
                raise SourceError(f"nuscenes.crop {self.cfg.crop} exceeds {path} ({full_w}x{full_h})")
            img.draft("RGB", (self.cfg.image_width, self.cfg.image_height))  # JPEG DCT downscaling
            sx, sy = img.size[0] / full_w, img.size[1] / full_h
            box = (left * sx, top * sy, right * sx, bottom * sy)
            out = img.convert("RGB").resize(
                (self.cfg.image_width, self.cfg.image_height), Image.Resampling.BILINEAR, box=box
            )
            return np.asarray(out, np.uint8)

    def _stored_intrinsics(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics of the cropped + resized image: K' = S · K, S scales and shifts the crop box."""
        left, top, right, bottom = self.cfg.crop
        sx, sy = self.cfg.image_width / (right - left), self.cfg.image_height / (bottom - top)
        S = np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy], [0.0, 0.0, 1.0]])
        return S @ K

    def sweep_points(self, sample: NuScenesSample) -> np.ndarray:
        """(N, 3) float64 points x, y, z of the keyframe LIDAR_TOP sweep in the sample's ego frame [m]."""
        if not sample.lidar_path.exists():
            raise SourceError(
                f"{sample.lidar_path}: LiDAR sweep missing; extract the samples/LIDAR_TOP archive"
            )
        raw = np.fromfile(sample.lidar_path, np.float32)
        if raw.size % 5:
            raise SourceError(f"{sample.lidar_path}: {raw.size} floats, not (N, 5) x, y, z, intensity, ring")
        return lidar_to_ego(sample.T_ego_lidar, raw.reshape(-1, 5)[:, :3])

    def lidar_bev(self, sample: NuScenesSample) -> np.ndarray:
        """(H, W, 2) uint8: the world's LiDAR height histogram of the keyframe sweep (module docstring)."""
        width, front, rear, _ = NUSCENES_EGO
        return sweep_bev(self.sweep_points(sample), self.cfg.bev, front, rear, width, self.cfg.ground)

    def _scene(self, ep: NuScenesEpisode, i: int, sensors: bool) -> Scene:
        s = ep.samples[i]
        n = len(ep.samples)
        T0 = s.T_global_ego

        def ego_pose_of(j: int) -> np.ndarray:
            return global_pose_to_ego(T0, ep.samples[j].T_global_ego)

        past = [ego_pose_of(max(j, 0)) for j in range(i - NUM_PAST, i)]
        fut_idx = [min(i + k, n - 1) for k in range(1, NUM_FUTURE + 1)]
        future = np.stack([ego_pose_of(j) for j in fut_idx]).astype(np.float32)
        future_valid = np.array([i + k < n for k in range(1, NUM_FUTURE + 1)])
        status, status_src = self.ego_status(ep, s.timestamp)
        map_geom, markings, _lane_tokens, map_meta = self.local_map(ep, i)
        fut_status = np.stack([self.ego_status(ep, ep.samples[j].timestamp)[0] for j in fut_idx])
        fut_status[~future_valid] = 0.0
        # agents at t = 0 ... 4 s, tracked by instance, in the ego frame at t = 0
        steps = [i + k for k in range(NUM_AGENT_STEPS)]
        ids: dict[str, int] = {}
        for j in steps:
            if j < n:
                for b in ep.samples[j].boxes:
                    ids.setdefault(b["instance"], len(ids))
        agents = np.zeros((NUM_AGENT_STEPS, len(ids), 8), np.float32)
        valid = np.zeros((NUM_AGENT_STEPS, len(ids)), bool)
        R0 = np.linalg.inv(T0)[:2, :2]
        for k, j in enumerate(steps):
            if j >= n:
                continue
            for b in ep.samples[j].boxes:
                a = ids[b["instance"]]
                x, y, yaw = global_pose_to_ego(T0, b["T_global_box"])
                vx, vy = R0 @ b["velocity_global"]
                agents[k, a] = (x, y, yaw, *b["size"], vx, vy, int(category_class(b["category"])))
                valid[k, a] = True
        if sensors:
            camera = self.camera_image(s)
            frames = np.stack([self.camera_image(ep.samples[min(i + k, n - 1)]) for k in FUTURE_FRAME_STEPS])
            bev = (
                self.lidar_bev(s)
                if self.cfg.lidar
                else np.zeros((self.cfg.bev.height, self.cfg.bev.width, len(LIDAR_CHANNELS)), np.uint8)
            )
            labelled = render_bev(
                map_geom.drivable_polygons, markings, agents[0][valid[0]][:, :5], self.cfg.bev
            )
        else:  # metric scenes read no sensor: 1-pixel placeholders, never stored
            camera, frames = (
                np.zeros((1, 1, 3), np.uint8),
                np.zeros((len(FUTURE_FRAME_STEPS), 1, 1, 3), np.uint8),
            )
            bev, labelled = np.zeros((1, 1, len(LIDAR_CHANNELS)), np.uint8), None
        padded = max(0, NUM_PAST - i)
        meta: dict[str, Any] = {
            "source": self.name,
            "scene": ep.name,
            "sample_token": s.token,
            "timestamp_us": s.timestamp,
            "ego_status_source": status_src,
            "history_padded": padded,
            "reference_point": "rear_axle",
        }
        meta.update(map_meta)
        absent = (["lidar_bev"] if not self.cfg.lidar else []) + (["map"] if ep.map is None else [])
        if absent:
            meta["absent"] = absent
        if self.cfg.cameras == ["CAM_FRONT"]:  # the stored image's pinhole model, for `data show`
            _, K, T_ego_cam, _ = s.cameras["CAM_FRONT"]
            meta["camera_model"] = {"K": self._stored_intrinsics(K).tolist(), "T_ego_cam": T_ego_cam.tolist()}
        return Scene(
            token=s.token,
            episode=ep.name,
            frame_index=i,
            agent_input=AgentInput(
                camera=camera,
                bev=bev,
                ego_history=np.stack(past).astype(np.float32),
                ego_status=status.astype(np.float32),
                command=int(self.command(ep, i)),
            ),
            privileged=Privileged(
                future_trajectory=future,
                future_valid=future_valid,
                future_frames=frames,
                future_ego_status=fut_status.astype(np.float32),
                agents=agents,
                agents_valid=valid,
                map=map_geom,
                scenario=ep.location or "nuscenes",
                labelled_bev=labelled,
            ),
            meta=meta,
        )

    def scenes_of(self, records: NuScenesEpisode) -> list[Scene]:
        return [self._scene(records, i, sensors=True) for i in range(len(records.samples))]

    def local_map(
        self, ep: NuScenesEpisode, i: int
    ) -> tuple[MapGeometry, list[np.ndarray], list[str], dict[str, Any]]:
        """The map around sample i in its ego frame: (MapGeometry, divider strips for the labelled BEV, lane
        tokens in MapGeometry order, meta). Empty (and meta "map" naming the missing file) without a map."""
        empty = np.zeros((0, 2), np.float32)
        if ep.map is None:
            why = "off (--source.map=off)" if self.cfg.map == "off" else f"absent: {ep.map_file} not found"
            return MapGeometry([], [], np.zeros(0, bool), [], [], empty), [], [], {"map": why}
        key = (ep.name, i)
        if self._last_local is not None and self._last_local[0] == key:
            return self._last_local[1]  # type: ignore[no-any-return]
        s = ep.samples[i]
        local = ep.map.around(s.T_global_ego, self.cfg.map_radius)
        t0, t_end = s.timestamp * 1e-6, ep.samples[-1].timestamp * 1e-6
        times = np.append(np.arange(t0, t_end, 0.1), t_end)
        path = ep.ego_track.at(times) if len(ep.ego_track.times) > 1 else ep.ego_track.poses[:1]
        visited, on_route = ep.map.route(path)
        route_src = "lanes"
        if visited:
            centre = {t: c for t, c in zip(local.lane_tokens, local.lane_centrelines)}
            line = np.concatenate(
                [
                    centre.get(t, global_xy_to_ego(s.T_global_ego, ep.map.lanes[t].centreline[:, :2]))
                    for t in visited
                ]
            )
        else:  # the logged ego is on no lane (a car park, a map gap): its own path is the route
            line, route_src = global_xy_to_ego(s.T_global_ego, path[:, :2]), "ego_path"
        try:
            route = resample_polyline(line, 1.0).astype(np.float32)
        except ValueError:  # fewer than 2 distinct points
            route, route_src = empty, "none"

        def f32(polys: list[np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(p, np.float32) for p in polys]

        geom = MapGeometry(
            lanes=f32(local.lane_centrelines),
            lane_polygons=f32(local.lane_polygons),
            lane_on_route=np.array([t in on_route for t in local.lane_tokens], bool),
            drivable_polygons=f32(local.drivable),
            intersection_polygons=f32(local.intersections),
            route=route,
        )
        meta = {"map": f"expansion v{ep.map.version}: {ep.map_file}", "route_source": route_src}
        self._last_local = (key, (geom, local.markings, local.lane_tokens, meta))
        return geom, local.markings, local.lane_tokens, meta

    def metric_scene_of(self, ep: NuScenesEpisode, i: int) -> MetricScene:
        """PDMS scene of sample i: the Scene's privileged part in its own rear-axle frame (no shift), the
        nuScenes ego geometry (NUSCENES_EGO), lane ids = map tokens, previous_token = the previous keyframe."""
        if ep.map is None:
            raise SourceError(self._no_map_message(ep))
        scene = self._scene(ep, i, sensors=False)
        m = metric_scene_from_scene(scene, center_to_rear_axle=0.0, ego_geometry=NUSCENES_EGO)
        _, _, tokens, _ = self.local_map(ep, i)
        return replace(
            m,
            lane_ids=np.array(tokens, dtype=str),
            previous_token=ep.samples[i - 1].token if i > 0 else "",
        )

    def _no_map_message(self, ep: NuScenesEpisode) -> str:
        if self.cfg.map == "off":
            return (
                f"{ep.name}: PDMS on nuScenes needs the map expansion, but --source.map=off; drop it "
                f"(map=auto reads {ep.map_file} when present)"
            )
        return (
            f"{ep.map_file}: map expansion file missing — PDMS on nuScenes needs its drivable area, lanes and "
            "route; download the nuScenes map expansion v1.3 and unpack it so that ROOT/maps/expansion/"
            "<location>.json exists (or score nuScenes open loop: `drivedistill eval openloop --store`)"
        )

    def metric_scenes_of(self, records: NuScenesEpisode) -> list[MetricScene]:
        """PDMS scenes of every keyframe (see `metric_scene_of`); raises `SourceError` without the map."""
        if records.map is None:
            raise SourceError(self._no_map_message(records))
        return [self.metric_scene_of(records, i) for i in range(len(records.samples))]

    def episode_info(self, records: NuScenesEpisode) -> dict[str, Any]:
        return {
            "source": self.name,
            "map": records.map_file if records.map is not None else f"absent ({self.cfg.map})",
            "scenario": records.location,
            "ego_status_source": "can_bus" if records.can is not None else "poses",
            "num_keyframes": len(records.samples),
        }


def stored_metric_scene(scene: Scene) -> MetricScene:
    """The PDMS scene of a Scene read back from a nuScenes store (privileged part needed): the same as
    `NuScenesSource.metric_scene_of` on the raw data, except lane ids (indices) and previous_token (unset).
    Plans to score with it are rear-axle poses in the Scene's own frame (nuScenes Scenes are rear-axle
    referenced: no shift). Raises `SourceError` when the store was collected without the map expansion."""
    if scene.meta.get("source") != "nuscenes":
        raise SourceError(
            f"scene {scene.token}: not from the nuscenes source (meta source {scene.meta.get('source')!r})"
        )
    if scene.privileged is None or not scene.privileged.map.drivable_polygons:
        why = scene.meta.get("map", "no privileged part")
        raise SourceError(
            f"scene {scene.token}: no map in the store ({why}); re-collect with the nuScenes map expansion v1.3 "
            "in ROOT/maps/expansion/ to score PDMS"
        )
    return metric_scene_from_scene(scene, center_to_rear_axle=0.0, ego_geometry=NUSCENES_EGO)


@register("source", "nuscenes", NuScenesConfig)
def build(cfg: NuScenesConfig) -> NuScenesSource:
    return NuScenesSource(cfg)
