"""A one-keyframe nuScenes dataset in the table format, written from ../shared/data/nuscenes_keyframe.

The info pickle there is trusted fixture data (mmdetection3d's demo, info version 1.1): poses as 4 × 4
matrices, boxes in the LIDAR_TOP frame as (x, y, z gravity centre, l, w, h, yaw). This converts them to
nuScenes records (global boxes, wlh sizes, quaternions) with the project's table writer.
"""

from __future__ import annotations

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
