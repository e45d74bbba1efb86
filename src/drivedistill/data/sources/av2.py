"""Argoverse 2 sensor logs → Scenes and MetricScenes at 2 Hz (PDMS log-replay scoring; pyarrow + json).

Frames. AV2's egovehicle frame has its origin at the **centre of the rear axle** on the ground, x forward,
y left, z up (av2 docs, "coordinate systems"); `city_SE3_egovehicle.feather` gives that frame's pose in
the city frame and the cuboids are in it. So AV2 ego poses already are NAVSIM's rear-axle poses: no
offset is applied. Each MetricScene uses the rear-axle frame at its t = 0 (ego_pose = 0).

Per log: a scene every 0.5 s (on the 10 Hz annotation clock) wherever 4 s of logged ego future exist.
Agents: the cuboids at t = 0 … 5 s every 0.5 s (valid where annotated), AV2 categories mapped to
`AgentClass` (bollards, cones, signs … are static objects); EGO_VEHICLE is dropped; velocities by
central finite differences of each track in the city frame at 10 Hz. Map: drivable areas; lane
polygons from left + reversed right boundaries (vehicle and bus lanes); intersection polygons = lane
segments flagged `is_intersection`. On-route lanes = the lanes the logged ego traverses from t = 0 to
the end of the log, their successors, and their same-direction neighbours (NAVSIM's route lanes are
whole roadblocks); the route centerline chains the traversed lanes' centerlines plus one successor.
The ego footprint is NAVSIM's Pacifica (the protocol's), not AV2's Ford Fusion; `ego_geometry` overrides it.

`Source` interface: an episode is a log; `load` parses it once (`Av2Log`), `metric_scenes_of` cuts the
MetricScenes above and `scenes_of` the training `Scene`s of the same instants (see `scene_from_records`):
rear-axle frame at t = 0, ego history from the pose track (held at the first pose where the log starts
later than t - 2 s; counted in meta "history_padded"), ego status and command from the poses. The
excerpts carry no images and no LiDAR sweeps: the camera and the students' BEV (the world's 2-channel
LiDAR height histogram, world/lidar.py) are zero images listed in meta "absent" — a student trained on
these scenes sees ego state and command only. The labelled BEV (drivable area + boxes; no lane markings)
drawn from the map and cuboids is privileged (`Privileged.labelled_bev`). Also read when present:
`calibration/` (camera intrinsics + extrinsics, `Av2Log.cameras`) and the ground-height raster
(`GroundHeight`, the ego's height above it in meta). `av2_forecasting.py` reads the motion-forecasting
scenarios with the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.feather as feather
import shapely

from drivedistill.config import check
from drivedistill.data.sources.base import Source, SourceError
from drivedistill.geometry.metric_scene import PACIFICA, MetricScene
from drivedistill.geometry.planar import absolute_to_relative, resample_polyline
from drivedistill.registry import register
from drivedistill.types import (
    DT,
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

CATEGORY_CLASS: dict[str, AgentClass] = {
    **dict.fromkeys(
        [
            "REGULAR_VEHICLE",
            "LARGE_VEHICLE",
            "BUS",
            "BOX_TRUCK",
            "TRUCK",
            "TRUCK_CAB",
            "VEHICULAR_TRAILER",
            "SCHOOL_BUS",
            "ARTICULATED_BUS",
            "RAILED_VEHICLE",
        ],
        AgentClass.VEHICLE,
    ),
    **dict.fromkeys(
        ["PEDESTRIAN", "OFFICIAL_SIGNALER", "STROLLER", "WHEELCHAIR", "DOG", "ANIMAL"], AgentClass.PEDESTRIAN
    ),
    **dict.fromkeys(
        ["BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER"],
        AgentClass.BICYCLE,
    ),
    **dict.fromkeys(
        [
            "BOLLARD",
            "CONSTRUCTION_CONE",
            "CONSTRUCTION_BARREL",
            "SIGN",
            "STOP_SIGN",
            "MOBILE_PEDESTRIAN_CROSSING_SIGN",
            "MESSAGE_BOARD_TRAILER",
            "TRAFFIC_LIGHT_TRAILER",
        ],
        AgentClass.STATIC,
    ),
}
DROPPED = {"EGO_VEHICLE"}
STEP_S, FUTURE_S, AGENT_HORIZON_S = 0.5, 4.0, 5.0


@dataclass
class Av2Config:
    """Where the logs are and how scenes are cut."""

    root: str = "../shared/data/argoverse2"
    logs: list[str] = field(default_factory=list)  # log ids; empty = every log directory under root
    # width, front, rear, wheelbase [m]
    ego_geometry: tuple[float, float, float, float] = field(default=PACIFICA, metadata=check(ge=0))
    # [px] size of the (absent: zero) camera image of the Scenes
    camera_height: int = field(default=128, metadata=check(ge=1))
    camera_width: int = field(default=256, metadata=check(ge=1))  # [px]
    bev: BevConfig = field(default_factory=BevConfig)  # grid of the (absent) LiDAR BEV and the labelled BEV


def _yaw(qw: np.ndarray, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
    return np.arctan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy**2 + qz**2))


def _xy(points: list[dict[str, float]]) -> np.ndarray:
    return np.array([[p["x"], p["y"]] for p in points], dtype=np.float64)


class EgoTrack:
    """City-frame rear-axle poses of the ego, interpolated at any time [s since the log's first pose]."""

    def __init__(
        self, path: Path | None, times: np.ndarray | None = None, poses: np.ndarray | None = None
    ) -> None:
        self.z = np.zeros(0)
        if path is None:  # from arrays: times (N,) [s], poses (N, 3) city frame (forecasting scenarios)
            assert times is not None and poses is not None
            self.t0_ns, self.times = 0, np.asarray(times, np.float64)
            self.poses = np.c_[poses[:, :2], np.unwrap(poses[:, 2])]
            return
        t = feather.read_table(path).to_pandas().drop_duplicates("timestamp_ns").sort_values("timestamp_ns")
        self.t0_ns = int(t.timestamp_ns.iloc[0])
        self.times = (t.timestamp_ns.to_numpy() - self.t0_ns) * 1e-9
        yaw = np.unwrap(_yaw(t.qw.to_numpy(), t.qx.to_numpy(), t.qy.to_numpy(), t.qz.to_numpy()))
        self.poses = np.stack([t.tx_m.to_numpy(), t.ty_m.to_numpy(), yaw], -1)
        self.z = t.tz_m.to_numpy()

    def at(self, times: np.ndarray) -> np.ndarray:
        """Poses (N, 3) [m, m, rad] in the city frame at times (N,) [s]."""
        return np.stack([np.interp(times, self.times, self.poses[:, i]) for i in range(3)], -1)

    def dynamics(self, t: float, wheelbase: float) -> np.ndarray:
        """speed [m/s], longitudinal acceleration [m/s²], steering [rad], yaw rate [rad/s] at t by finite differences."""

        def speed_yaw_rate(tc: float, h: float = 0.1) -> tuple[float, float]:
            a, b = self.at(np.array([tc - h, tc + h]))
            heading = 0.5 * (a[2] + b[2])
            v = ((b[0] - a[0]) * np.cos(heading) + (b[1] - a[1]) * np.sin(heading)) / (2 * h)
            return float(v), float((b[2] - a[2]) / (2 * h))

        v, yaw_rate = speed_yaw_rate(t)
        accel = (speed_yaw_rate(t + 0.25)[0] - speed_yaw_rate(t - 0.25)[0]) / 0.5
        steering = (
            float(np.clip(np.arctan(wheelbase * yaw_rate / v), -np.pi / 3, np.pi / 3)) if v > 1.0 else 0.0
        )
        return np.array([v, accel, steering, yaw_rate])


def ego_history(
    ego: EgoTrack, t0: float, wheelbase: float, past: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Logged past of the ego at 0.1 s, `past` s before t0 up to t0 (from where finite differences exist):
    times (H,) ≤ 0 [s] and (H, 7) x, y, yaw in the ego frame at t0, v_lon, a_lon, a_lat = v·yaw rate, yaw rate."""
    times = np.round(np.arange(-past, 1e-9, 0.1), 3)
    times = times[t0 + times >= ego.times[0] + 0.4]
    origin = ego.at(np.array([t0]))[0]
    poses = absolute_to_relative(origin, ego.at(t0 + times))
    poses[:, 2] = np.unwrap(poses[:, 2])
    dyn = np.array([ego.dynamics(t0 + t, wheelbase) for t in times]).reshape(-1, 4)
    lateral = dyn[:, 0] * dyn[:, 3]
    return times, np.c_[poses, dyn[:, 0], dyn[:, 1], lateral, dyn[:, 3]]


@dataclass
class Lane:
    id: str
    polygon: np.ndarray  # (P, 2) city frame
    centerline: np.ndarray  # (C, 2) city frame, driving direction
    successors: list[str]
    neighbours: list[str]
    is_intersection: bool


def _load_map(map_dir: Path) -> tuple[list[np.ndarray], dict[str, Lane]]:
    files = sorted(map_dir.glob("log_map_archive_*.json"))
    if not files:
        raise FileNotFoundError(f"{map_dir}: no log_map_archive_*.json; the AV2 log needs its vector map")
    data = json.loads(files[0].read_text())
    drivable = [_xy(a["area_boundary"]) for a in data["drivable_areas"].values()]
    lanes: dict[str, Lane] = {}
    for seg in data["lane_segments"].values():
        if seg["lane_type"] == "BIKE":
            continue
        left, right = _xy(seg["left_lane_boundary"]), _xy(seg["right_lane_boundary"])
        n = 20
        centre = 0.5 * (_resample_n(left, n) + _resample_n(right, n))
        neighbours = [
            str(seg[k]) for k in ("left_neighbor_id", "right_neighbor_id") if seg.get(k) is not None
        ]
        lanes[str(seg["id"])] = Lane(
            str(seg["id"]),
            np.concatenate([left, right[::-1]]),
            centre,
            [str(s) for s in seg["successors"]],
            neighbours,
            bool(seg["is_intersection"]),
        )
    return drivable, lanes


def _resample_n(line: np.ndarray, n: int) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=-1))])
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, line[:, 0]), np.interp(s, cum, line[:, 1])], -1)


def _direction(lane: Lane) -> np.ndarray:
    d = lane.centerline[-1] - lane.centerline[0]
    return d / max(float(np.linalg.norm(d)), 1e-9)


def route_lanes(lanes: dict[str, Lane], ego_path: np.ndarray) -> tuple[list[str], set[str]]:
    """Traversed lane ids in visit order, and the on-route set (+ successors, same-direction neighbours).

    ego_path (N, 3) city-frame rear-axle poses from t = 0 to the end of the log.
    """
    ids = list(lanes)
    polys = [shapely.make_valid(shapely.Polygon(lanes[i].polygon)) for i in ids]
    tree = shapely.STRtree(polys)
    pt_idx, lane_idx = tree.query(shapely.points(ego_path[:, :2]), predicate="within")
    heading = np.stack([np.cos(ego_path[:, 2]), np.sin(ego_path[:, 2])], -1)
    hits = np.bincount(lane_idx, minlength=len(ids))  # ego samples inside each lane
    if len(pt_idx) == 0:
        raise ValueError("the logged ego path crosses no lane polygon of the map; cannot build the route")
    first = pt_idx.min()
    start = max(
        (ids[j] for j in lane_idx[pt_idx == first]),
        key=lambda c: float(_direction(lanes[c]) @ heading[first]),
    )
    index = {lane_id: j for j, lane_id in enumerate(ids)}
    visited = [start]
    while len(visited) < 100:  # follow the lane graph where the logged ego went (a lane change: a neighbour)
        cur = lanes[visited[-1]]
        succ = [x for x in cur.successors if x in lanes and x not in visited]
        side = [
            x
            for x in cur.neighbours
            if x in lanes and x not in visited and _direction(lanes[x]) @ _direction(cur) > 0.5
        ]
        driven = [x for x in succ + side if hits[index[x]] > 0]
        if driven:
            visited.append(max(driven, key=lambda x: (x in succ, hits[index[x]])))
            continue
        if succ:  # the log ends here: one more lane of look-ahead
            visited.append(max(succ, key=lambda x: float(_direction(lanes[x]) @ _direction(cur))))
        break
    on_route = set(visited)
    for lane_id in list(visited):
        on_route.update(s for s in lanes[lane_id].successors if s in lanes)
    frontier = list(on_route)
    while frontier:  # same-direction neighbours: the rest of the roadblock
        lane = lanes[frontier.pop()]
        for n in lane.neighbours:
            if n in lanes and n not in on_route and float(_direction(lanes[n]) @ _direction(lane)) > 0.5:
                on_route.add(n)
                frontier.append(n)
    return visited, on_route


class Annotations:
    """Cuboids of one log in the city frame, with finite-difference velocities per track (10 Hz)."""

    def __init__(self, log_dir: Path, ego: EgoTrack) -> None:
        files = [log_dir / "annotations.feather", log_dir / "annotations_with_ego.feather"]
        path = next((f for f in files if f.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{log_dir}: no annotations.feather / annotations_with_ego.feather")
        df = feather.read_table(path).to_pandas()
        df = df[~df.category.isin(DROPPED)]
        unknown = sorted(set(df.category) - set(CATEGORY_CLASS))
        if unknown:
            raise ValueError(f"{path}: unknown AV2 categories {unknown}; add them to av2.CATEGORY_CLASS")
        df = df.sort_values(["track_uuid", "timestamp_ns"]).reset_index(drop=True)
        self.times = (df.timestamp_ns.to_numpy() - ego.t0_ns) * 1e-9
        ego_pose = ego.at(self.times)
        local = np.stack([df.tx_m.to_numpy(), df.ty_m.to_numpy()], -1)
        c, s = np.cos(ego_pose[:, 2]), np.sin(ego_pose[:, 2])
        xy = ego_pose[:, :2] + np.stack(
            [c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1]], -1
        )
        yaw = ego_pose[:, 2] + _yaw(df.qw.to_numpy(), df.qx.to_numpy(), df.qy.to_numpy(), df.qz.to_numpy())
        track = df.track_uuid.to_numpy()
        vel = np.zeros_like(xy)
        same_prev = np.r_[False, track[1:] == track[:-1]]
        same_next = np.r_[track[:-1] == track[1:], False]
        i_prev = np.where(same_prev, np.arange(len(df)) - 1, np.arange(len(df)))
        i_next = np.where(same_next, np.arange(len(df)) + 1, np.arange(len(df)))
        dt = self.times[i_next] - self.times[i_prev]
        ok = dt > 0
        vel[ok] = (xy[i_next[ok]] - xy[i_prev[ok]]) / dt[ok, None]
        self.track, self.xy, self.yaw, self.vel = track, xy, yaw, vel
        self.size = np.stack([df.length_m.to_numpy(), df.width_m.to_numpy()], -1)
        self.category = df.category.to_numpy()
        self.clock = np.unique(self.times)  # lidar sweep times [s]


class GroundHeight:
    """AV2's ground-height raster (`*_ground_height_surface_*.npy`, metres) with its Sim2 city → raster
    transform (`*___img_Sim2_city.json`: raster (col, row) = s · (R · city_xy + t))."""

    def __init__(self, map_dir: Path) -> None:
        npy = sorted(map_dir.glob("*_ground_height_surface_*.npy"))
        sim2 = sorted(map_dir.glob("*___img_Sim2_city.json"))
        if not npy or not sim2:
            raise SourceError(
                f"{map_dir}: no ground-height raster (*_ground_height_surface_*.npy + *___img_Sim2_city.json)"
            )
        self.raster = np.load(npy[0], allow_pickle=False).astype(np.float64)
        t = json.loads(sim2[0].read_text())
        self.R = np.asarray(t["R"], np.float64).reshape(2, 2)
        self.t = np.asarray(t["t"], np.float64)
        self.s = float(t["s"])

    def at(self, xy: np.ndarray) -> np.ndarray:
        """Ground height [m] (N,) at city-frame points (N, 2); NaN outside the raster or where unmapped."""
        uv = self.s * (np.asarray(xy, np.float64) @ self.R.T + self.t)
        col, row = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        ok = (row >= 0) & (row < self.raster.shape[0]) & (col >= 0) & (col < self.raster.shape[1])
        out = np.full(len(uv), np.nan)
        out[ok] = self.raster[row[ok], col[ok]]
        return out


def read_calibration(calib_dir: Path) -> dict[str, dict[str, Any]]:
    """Cameras of `calibration/`: name → {"K" (3, 3) [px], "size" (h, w) [px], "T_ego_cam" (4, 4)}.

    T_ego_cam maps camera-frame points (x right, y down, z forward) into the egovehicle frame."""
    from scipy.spatial.transform import Rotation

    paths = [calib_dir / "intrinsics.feather", calib_dir / "egovehicle_SE3_sensor.feather"]
    for p in paths:
        if not p.exists():
            raise SourceError(
                f"{p}: missing; an AV2 calibration/ directory holds intrinsics + egovehicle_SE3_sensor"
            )
    intr = feather.read_table(paths[0]).to_pandas().set_index("sensor_name")
    extr = feather.read_table(paths[1]).to_pandas().set_index("sensor_name")
    cams: dict[str, dict[str, Any]] = {}
    for name, row in intr.iterrows():
        if name not in extr.index:
            continue
        e = extr.loc[name]
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat([e.qx, e.qy, e.qz, e.qw]).as_matrix()
        T[:3, 3] = [e.tx_m, e.ty_m, e.tz_m]
        K = np.array([[row.fx_px, 0, row.cx_px], [0, row.fy_px, row.cy_px], [0, 0, 1.0]])
        cams[str(name)] = {"K": K, "size": (int(row.height_px), int(row.width_px)), "T_ego_cam": T}
    return cams


def project_to_camera(points_ego: np.ndarray, camera: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Egovehicle-frame points (N, 3) → pixels (N, 2) and `visible` (N,) bool (in front and in the image)."""
    T_cam_ego = np.linalg.inv(camera["T_ego_cam"])
    pc = points_ego @ T_cam_ego[:3, :3].T + T_cam_ego[:3, 3]
    uvw = pc @ camera["K"].T
    uv = uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-6)
    h, w = camera["size"]
    vis = (pc[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return uv, vis


@dataclass
class Av2Log:
    """The parsed records of one AV2 log (or forecasting scenario): everything both scene kinds read."""

    log: str
    ego: EgoTrack
    ann: Annotations
    drivable: list[np.ndarray]
    lanes: dict[str, Lane]
    t0s: list[float]  # [s] scene times on the annotation clock
    city: str = ""
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    ground: GroundHeight | None = None


def command_from_future(future: np.ndarray) -> Command:
    """VAD/ST-P3 rule on the ego frame (x forward, y left): lateral offset of the 3 s pose ≥ 2 m left →
    LEFT, ≥ 2 m right → RIGHT, else STRAIGHT (their LiDAR frame has x = right, hence the sign flip)."""
    lateral_right = -float(future[min(5, len(future) - 1), 1])
    if lateral_right >= 2.0:
        return Command.RIGHT
    if lateral_right <= -2.0:
        return Command.LEFT
    return Command.STRAIGHT


def scene_from_records(rec: Av2Log, m: MetricScene, t0: float, cfg: Av2Config, source: str) -> Scene:
    """The training `Scene` of the instant `t0` whose MetricScene is `m` (both rear-axle frame at t0)."""
    origin = rec.ego.at(np.array([t0]))[0]
    past_t = t0 + DT * np.arange(-NUM_PAST, 0)
    padded = int((past_t < rec.ego.times[0] - 1e-6).sum())
    history = absolute_to_relative(origin, rec.ego.at(np.maximum(past_t, rec.ego.times[0]))).astype(
        np.float32
    )
    dyn = m.ego_dynamics
    status = np.array([dyn[0], dyn[1], dyn[3]], np.float32)
    fut_t = t0 + DT * np.arange(1, NUM_FUTURE + 1)
    fut_status = np.stack([rec.ego.dynamics(float(t), cfg.ego_geometry[3])[[0, 1, 3]] for t in fut_t])
    k = NUM_AGENT_STEPS
    valid = m.agent_valid[:k]
    agents = np.zeros((k, len(m.agent_ids), 8), np.float32)
    agents[..., :3] = np.nan_to_num(m.agent_poses[:k])
    agents[..., 3:5] = m.agent_sizes[None]
    agents[..., 5:7] = np.nan_to_num(m.agent_velocities[:k])
    agents[..., 7] = m.agent_types[None]
    boxes = agents[0][valid[0]][:, :5]
    labelled = render_bev(m.drivable_polygons, [], boxes, cfg.bev)

    def local(poly: np.ndarray) -> np.ndarray:
        return absolute_to_relative(origin, np.c_[poly, np.zeros(len(poly))])[:, :2].astype(np.float32)

    lane_ids = [str(i) for i in m.lane_ids]
    lanes_map = MapGeometry(
        lanes=[local(rec.lanes[i].centerline) for i in lane_ids],
        lane_polygons=[p.astype(np.float32) for p in m.lane_polygons],
        lane_on_route=np.asarray(m.lane_on_route, bool),
        drivable_polygons=[p.astype(np.float32) for p in m.drivable_polygons],
        intersection_polygons=[p.astype(np.float32) for p in m.intersection_polygons],
        route=m.route.astype(np.float32),
    )
    h, w = cfg.camera_height, cfg.camera_width
    meta: dict[str, Any] = {
        "source": source,
        "log": rec.log,
        "t0": round(t0, 3),
        "absent": ["camera", "lidar_bev"],
    }
    meta["history_padded"] = padded
    if rec.ground is not None and len(rec.ego.z):
        g = rec.ground.at(origin[None, :2])[0]
        z = float(np.interp(t0, rec.ego.times, rec.ego.z))
        meta["ego_height_above_ground"] = None if not np.isfinite(g) else round(z - float(g), 3)
    return Scene(
        token=m.token,
        episode=rec.log,
        frame_index=rec.t0s.index(t0),
        agent_input=AgentInput(
            camera=np.zeros((h, w, 3), np.uint8),
            bev=np.zeros((cfg.bev.height, cfg.bev.width, len(LIDAR_CHANNELS)), np.uint8),
            ego_history=history,
            ego_status=status,
            command=int(command_from_future(m.human_future)),
        ),
        privileged=Privileged(
            future_trajectory=m.human_future.astype(np.float32),
            future_valid=np.asarray(m.human_valid, bool),
            future_frames=np.zeros((3, h, w, 3), np.uint8),
            future_ego_status=fut_status.astype(np.float32),
            agents=agents,
            agents_valid=np.asarray(valid, bool),
            map=lanes_map,
            scenario=f"av2-{rec.city}" if rec.city else "av2",
            labelled_bev=labelled,
        ),
        meta=meta,
    )


class Av2Source(Source[Av2Log]):
    """The AV2 logs under `cfg.root` as MetricScenes and Scenes (see the module docstring)."""

    name = "av2"
    sensors = ("ego_status",)
    privileged = ("labelled_bev",)

    def __init__(self, cfg: Av2Config) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        if not self.root.is_dir():
            raise SourceError(
                f"{self.root}: AV2 root not found; pass --root (e.g. ../shared/data/argoverse2)"
            )
        logs = cfg.logs or sorted(
            p.name for p in self.root.iterdir() if (p / "city_SE3_egovehicle.feather").exists()
        )
        if not logs:
            raise SourceError(f"{self.root}: no log directories with city_SE3_egovehicle.feather")
        self.logs = logs

    def episodes(self) -> list[str]:
        return list(self.logs)

    def store_config(self) -> dict[str, Any]:
        from drivedistill.config import to_dict

        return {"source": {"name": self.name, **to_dict(self.cfg)}}

    def load(self, episode: str) -> Av2Log:
        log_dir = self.root / episode
        if not (log_dir / "city_SE3_egovehicle.feather").exists():
            raise SourceError(
                f"{log_dir / 'city_SE3_egovehicle.feather'}: missing; is {episode} an AV2 log id?"
            )
        ego = EgoTrack(log_dir / "city_SE3_egovehicle.feather")
        ann = Annotations(log_dir, ego)
        drivable, lanes = _load_map(log_dir / "map")
        clock = ann.clock[ann.clock >= ego.times[0] + 0.4]  # room for the finite differences at t = 0
        t0s = []
        for k in range(0, len(clock), round(STEP_S * 10)):
            if float(clock[k]) + FUTURE_S > ego.times[-1] - 0.05:
                break
            t0s.append(float(clock[k]))
        city = next(iter(sorted((log_dir / "map").glob("log_map_archive_*.json")))).stem.split("____")[-1]
        cams = read_calibration(log_dir / "calibration") if (log_dir / "calibration").is_dir() else {}
        has_ground = any((log_dir / "map").glob("*_ground_height_surface_*.npy"))
        ground = GroundHeight(log_dir / "map") if has_ground else None
        return Av2Log(episode, ego, ann, drivable, lanes, t0s, city.split("_")[0], cams, ground)

    def metric_scenes_of(self, records: Av2Log) -> list[MetricScene]:
        scenes: list[MetricScene] = []
        for k, t0 in enumerate(records.t0s):
            scene = self._scene(
                f"{records.log}_{k:03d}", t0, records.ego, records.ann, records.drivable, records.lanes
            )
            # NAVSIM v2 metric-cache fields: the previous 2 Hz scene (EC) and 1.5 s of logged past (HC)
            times, history = ego_history(records.ego, t0, self.cfg.ego_geometry[3])
            previous = scenes[-1].token if scenes else ""
            scenes.append(
                replace(scene, previous_token=previous, ego_history_times=times, ego_history=history)
            )
        return scenes

    def scenes_of(self, records: Av2Log) -> list[Scene]:
        return [
            scene_from_records(records, m, t0, self.cfg, self.name)
            for m, t0 in zip(self.metric_scenes_of(records), records.t0s)
        ]

    def episode_info(self, records: Av2Log) -> dict[str, Any]:
        return {"source": self.name, "scenario": f"av2-{records.city}", "cameras": sorted(records.cameras)}

    def log_scenes(self, log: str) -> list[MetricScene]:
        """Every 2 Hz scene of one log with 4 s of logged future."""
        return self.metric_scenes_of(self.load(log))

    def _scene(
        self,
        token: str,
        t0: float,
        ego: EgoTrack,
        ann: Annotations,
        drivable: list[np.ndarray],
        lanes: dict[str, Lane],
    ) -> MetricScene:
        wheelbase = self.cfg.ego_geometry[3]
        origin = ego.at(np.array([t0]))[0]
        future = ego.at(t0 + STEP_S * np.arange(1, 9))
        human = absolute_to_relative(origin, future)
        path = ego.at(np.arange(t0, ego.times[-1], 0.1))
        visited, on_route = route_lanes(lanes, path)

        times = STEP_S * np.arange(round(AGENT_HORIZON_S / STEP_S) + 1)
        sample = np.full(len(times), np.nan)
        for i, t in enumerate(t0 + times):  # nearest sweep within 20 ms
            j = int(np.argmin(np.abs(ann.clock - t)))
            if abs(ann.clock[j] - t) < 0.02:
                sample[i] = ann.clock[j]
        rows = np.flatnonzero(np.isin(ann.times, sample[np.isfinite(sample)]))
        ids = sorted(set(ann.track[rows]))
        col = {tid: a for a, tid in enumerate(ids)}
        step = {float(t): i for i, t in enumerate(sample) if np.isfinite(t)}
        n_k, n_a = len(times), len(ids)
        poses = np.full((n_k, n_a, 3), np.nan)
        vel = np.full((n_k, n_a, 2), np.nan)
        valid = np.zeros((n_k, n_a), bool)
        sizes = np.zeros((n_a, 2))
        types = np.zeros(n_a, np.int64)
        c, s = np.cos(origin[2]), np.sin(origin[2])
        local_pose = absolute_to_relative(origin, np.c_[ann.xy[rows], ann.yaw[rows]])
        v = ann.vel[rows]
        local_vel = np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]], -1)
        for n, r in enumerate(rows):
            i, a = step[float(ann.times[r])], col[ann.track[r]]
            poses[i, a] = local_pose[n]
            vel[i, a] = local_vel[n]
            valid[i, a] = True
            sizes[a] = ann.size[r]
            types[a] = CATEGORY_CLASS[ann.category[r]]

        def local(poly: np.ndarray) -> np.ndarray:
            return absolute_to_relative(origin, np.c_[poly, np.zeros(len(poly))])[:, :2]

        lane_ids = list(lanes)
        route = np.concatenate([local(lanes[i].centerline) for i in visited])
        return MetricScene(
            token=token,
            ego_pose=np.zeros(3),
            ego_dynamics=ego.dynamics(t0, wheelbase),
            agent_times=times,
            agent_poses=poses,
            agent_velocities=vel,
            agent_sizes=sizes,
            agent_valid=valid,
            agent_types=types,
            agent_static=types == AgentClass.STATIC,
            agent_ids=np.array(ids, dtype=str),
            drivable_polygons=[local(p) for p in drivable],
            lane_polygons=[local(lanes[i].polygon) for i in lane_ids],
            lane_ids=np.array(lane_ids, dtype=str),
            lane_on_route=np.array([i in on_route for i in lane_ids]),
            intersection_polygons=[local(lanes[i].polygon) for i in lane_ids if lanes[i].is_intersection],
            route=resample_polyline(route, 1.0),
            human_future=human,
            human_valid=np.ones(8, bool),
            ego_geometry=np.asarray(self.cfg.ego_geometry, np.float64),
        )


@register("source", "av2", Av2Config)
def build(cfg: Av2Config) -> Av2Source:
    return Av2Source(cfg)
