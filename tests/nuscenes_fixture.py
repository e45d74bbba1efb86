"""A one-keyframe nuScenes dataset in the table format, written from ../shared/data/nuscenes_keyframe.

The info pickle there is trusted fixture data (mmdetection3d's demo, info version 1.1): poses as 4 × 4
matrices, boxes in the LIDAR_TOP frame as (x, y, z gravity centre, l, w, h, yaw). This converts them to
nuScenes records (global boxes, wlh sizes, quaternions) with the project's table writer.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np

from drivedistill.data.sources._nuscenes_tables import NuScenesTableWriter

SCENE = "scene-0061"  # the mini scene of log n015-2018-07-24-11-22-45+0800
LOG = "n015-2018-07-24-11-22-45+0800"
# mmdetection3d label index → a nuScenes category of that class (-1: not among the ten classes)
LABEL_CATEGORY = {
    0: "vehicle.car",
    1: "vehicle.truck",
    2: "vehicle.trailer",
    3: "vehicle.bus.rigid",
    4: "vehicle.construction",
    5: "vehicle.bicycle",
    6: "vehicle.motorcycle",
    7: "human.pedestrian.adult",
    8: "movable_object.trafficcone",
    9: "movable_object.barrier",
    -1: "movable_object.debris",
}


def _rz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def load_info(src: Path) -> dict:
    with open(src / f"{LOG}.pkl", "rb") as f:  # trusted fixture data (see module docstring)
        return pickle.load(f)["data_list"][0]


def write_keyframe_dataset(src: Path, out: Path) -> Path:
    """Write ROOT=out (v1.0-mini tables + samples/ files); returns out."""
    info = load_info(src)
    w = NuScenesTableWriter(out, "v1.0-mini")
    log = w.log(LOG, "singapore-onenorth", "2018-07-24")
    scene = w.scene(SCENE, log, "one real keyframe")
    ts = round(info["timestamp"] * 1e6)
    sample = w.sample(scene, ts, tok=info["token"])
    T_global_ego = np.asarray(info["ego2global"], np.float64)
    T_ego_lidar = np.asarray(info["lidar_points"]["lidar2ego"], np.float64)
    lidar_file = info["lidar_points"]["lidar_path"]
    (out / "samples" / "LIDAR_TOP").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / lidar_file, out / "samples" / "LIDAR_TOP" / lidar_file)
    pose = w.ego_pose(f"{sample}/LIDAR_TOP", T_global_ego, ts)
    cs = w.calibrated_sensor(LOG, "LIDAR_TOP", "lidar", T_ego_lidar, None)
    w.sample_data(sample, "LIDAR_TOP", pose, cs, ts, f"samples/LIDAR_TOP/{lidar_file}")
    for ch, cam in info["images"].items():
        (out / "samples" / ch).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / cam["img_path"], out / "samples" / ch / cam["img_path"])
        cts = round(cam["timestamp"] * 1e6)
        # the camera's own ego pose (it fired up to 43 ms before the LiDAR): lidar2cam includes the ego motion,
        # T_global_cam = T_global_ego · T_ego_lidar · lidar2cam⁻¹ and T_global_ego(cam) = T_global_cam · cam2ego⁻¹
        T_ego_cam = np.asarray(cam["cam2ego"], np.float64)
        T_global_cam = T_global_ego @ T_ego_lidar @ np.linalg.inv(np.asarray(cam["lidar2cam"], np.float64))
        cpose = w.ego_pose(f"{sample}/{ch}", T_global_cam @ np.linalg.inv(T_ego_cam), cts)
        ccs = w.calibrated_sensor(LOG, ch, "camera", T_ego_cam, cam["cam2img"])
        w.sample_data(
            sample,
            ch,
            cpose,
            ccs,
            cts,
            f"samples/{ch}/{cam['img_path']}",
            (1600, 900),
            tok=cam["sample_data_token"],
        )
    for k, inst in enumerate(info["instances"]):
        x, y, z, length, width, height, yaw = inst["bbox_3d"]
        T_lidar_box = np.eye(4)
        T_lidar_box[:3, :3], T_lidar_box[:3, 3] = _rz(yaw), (x, y, z)
        T_global_box = T_global_ego @ T_ego_lidar @ T_lidar_box
        w.annotation(
            sample,
            f"{SCENE}/{k}",
            LABEL_CATEGORY[int(inst["bbox_label_3d"])],
            T_global_box,
            (width, length, height),
            int(inst["num_lidar_pts"]),
        )
    w.write()
    return out


# ----- map expansion (v1.3 layout) around the keyframe's ego pose ---------------------------------------
LOCATION = "singapore-onenorth"
# lanes in the keyframe's ego frame (x forward, y left): token → (arcline paths as (start x, y, yaw, shape,
# radius, segment lengths), lane half width [m]). EGO_LANE runs through the ego, LEFT_LANE beside it in the
# same direction, ONCOMING the other way, CONNECTOR crosses the junction, CURVED leaves it (left, straight,
# right: a real three-segment arcline path).
EGO_LANE, LEFT_LANE, ONCOMING, CONNECTOR, CURVED = (
    "lane-ego",
    "lane-left",
    "lane-oncoming",
    "conn-1",
    "lane-curved",
)
LANES: dict[str, tuple[tuple[float, float, float, str, float, tuple[float, float, float]], bool]] = {
    EGO_LANE: ((-40.0, 0.0, 0.0, "LSL", 999.0, (0.0, 70.0, 0.0)), False),
    LEFT_LANE: ((-40.0, 3.5, 0.0, "RSR", 999.0, (0.0, 70.0, 0.0)), False),
    ONCOMING: ((30.0, -3.5, np.pi, "LSL", 999.0, (0.0, 70.0, 0.0)), False),
    CONNECTOR: ((30.0, 0.0, 0.0, "LSL", 999.0, (0.0, 15.0, 0.0)), True),
    CURVED: ((45.0, 0.0, 0.0, "LSR", 20.0, (10.0, 6.0, 10.0)), False),
}
HALF_WIDTH = 1.75
DRIVABLE_HOLE = [(8.0, -7.5), (16.0, -7.5), (16.0, -5.5), (8.0, -5.5)]  # a traffic island (ego frame)


def _arcline_local_poses(
    start: tuple[float, float, float], shape: str, radius: float, lengths: tuple[float, ...]
):  # type: ignore[no-untyped-def]
    """Dense poses along a local arcline path (fixture geometry only; 0.25 m steps, closed form)."""
    x, y, yaw = start
    out = [(x, y, yaw)]
    for letter, length in zip(shape, lengths):
        k = {"L": 1.0, "R": -1.0, "S": 0.0}[letter] / radius
        n = max(int(np.ceil(length / 0.25)), 1)
        for _ in range(n):
            ds = length / n
            if abs(k) < 1e-12:
                x, y = x + ds * np.cos(yaw), y + ds * np.sin(yaw)
            else:
                x += (np.sin(yaw + k * ds) - np.sin(yaw)) / k
                y += (np.cos(yaw) - np.cos(yaw + k * ds)) / k
                yaw += k * ds
            out.append((x, y, yaw))
    return np.array(out)


def write_map_expansion(root: Path, T_global_ego: np.ndarray) -> Path:
    """Write ROOT/maps/expansion/singapore-onenorth.json in the map expansion v1.3 layout: a drivable area
    (one polygon with a hole + the curved road), an intersection road segment, five lanes / connectors with
    arcline paths and connectivity, lane and road dividers — all around the keyframe's ego pose."""
    yaw0 = float(np.arctan2(T_global_ego[1, 0], T_global_ego[0, 0]))
    c, s = np.cos(yaw0), np.sin(yaw0)
    t0 = T_global_ego[:2, 3]

    def to_global(xy):  # type: ignore[no-untyped-def]
        xy = np.asarray(xy, np.float64)
        return np.stack([c * xy[:, 0] - s * xy[:, 1], s * xy[:, 0] + c * xy[:, 1]], -1) + t0

    data: dict = {"version": "1.3", "canvas_edge": [1585.6, 2025.0]}
    for layer in (
        "polygon",
        "line",
        "node",
        "drivable_area",
        "road_segment",
        "road_block",
        "lane",
        "ped_crossing",
        "walkway",
        "stop_line",
        "carpark_area",
        "road_divider",
        "lane_divider",
        "traffic_light",
        "lane_connector",
    ):
        data[layer] = []
    data["arcline_path_3"], data["connectivity"] = {}, {}

    def nodes(xy_local) -> list[str]:  # type: ignore[no-untyped-def]
        toks = []
        for x, y in to_global(xy_local):
            tok = f"node-{len(data['node'])}"
            data["node"].append({"token": tok, "x": float(x), "y": float(y)})
            toks.append(tok)
        return toks

    def polygon(shell, holes=()) -> str:  # type: ignore[no-untyped-def]
        tok = f"polygon-{len(data['polygon'])}"
        data["polygon"].append(
            {
                "token": tok,
                "exterior_node_tokens": nodes(shell),
                "holes": [{"node_tokens": nodes(h)} for h in holes],
            }
        )
        return tok

    def line(xy) -> str:  # type: ignore[no-untyped-def]
        tok = f"line-{len(data['line'])}"
        data["line"].append({"token": tok, "node_tokens": nodes(xy)})
        return tok

    straight = polygon([(-45, -8), (30, -8), (30, 8), (-45, 8)], [DRIVABLE_HOLE])
    junction = polygon([(30, -8), (45, -8), (45, 8), (30, 8)])
    curved_road = polygon([(45, -4), (70, -4), (70, 20), (45, 20)])
    data["drivable_area"].append({"token": "drivable-0", "polygon_tokens": [straight, junction, curved_road]})
    data["road_segment"] += [
        {
            "token": "segment-road",
            "polygon_token": straight,
            "is_intersection": False,
            "drivable_area_token": "drivable-0",
        },
        {
            "token": "segment-junction",
            "polygon_token": junction,
            "is_intersection": True,
            "drivable_area_token": "drivable-0",
        },
    ]
    for tok, ((x, y, yaw, shape, radius, lengths), connector) in LANES.items():
        poses = _arcline_local_poses((x, y, yaw), shape, radius, lengths)
        normal = np.stack([-np.sin(poses[:, 2]), np.cos(poses[:, 2])], -1)
        left, right = poses[:, :2] + HALF_WIDTH * normal, poses[:, :2] - HALF_WIDTH * normal
        poly = polygon(np.concatenate([right, left[::-1]]))
        end = poses[-1]
        g_start, g_end = to_global([(x, y)])[0], to_global([end[:2]])[0]
        data["arcline_path_3"][tok] = [
            {
                "start_pose": [
                    float(g_start[0]),
                    float(g_start[1]),
                    float(np.remainder(yaw + yaw0 + np.pi, 2 * np.pi) - np.pi),
                ],
                "end_pose": [
                    float(g_end[0]),
                    float(g_end[1]),
                    float(np.remainder(end[2] + yaw0 + np.pi, 2 * np.pi) - np.pi),
                ],
                "shape": shape,
                "radius": radius,
                "segment_length": list(lengths),
            }
        ]
        rec = {"token": tok, "polygon_token": poly}
        if connector:
            data["lane_connector"].append(rec)
        else:
            rec.update(
                lane_type="CAR",
                from_edge_line_token=None,
                to_edge_line_token=None,
                left_lane_divider_segments=[],
                right_lane_divider_segments=[],
            )
            data["lane"].append(rec)
    links = {EGO_LANE: ([], [CONNECTOR]), CONNECTOR: ([EGO_LANE], [CURVED]), CURVED: ([CONNECTOR], [])}
    for tok in LANES:
        incoming, outgoing = links.get(tok, ([], []))
        data["connectivity"][tok] = {"incoming": incoming, "outgoing": outgoing}
    data["lane_divider"].append(
        {
            "token": "lane-divider-0",
            "line_token": line([(-40, 1.75), (30, 1.75)]),
            "lane_divider_segments": [],
        }
    )
    data["road_divider"].append(
        {
            "token": "road-divider-0",
            "line_token": line([(-40, -1.75), (30, -1.75)]),
            "road_segment_token": "segment-road",
        }
    )
    out = root / "maps" / "expansion" / f"{LOCATION}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out
