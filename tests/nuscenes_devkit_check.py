"""Run with nuscenes-devkit's own Python (not the project's): prints what the devkit reads from a dataset
as JSON, for tests/test_nuscenes.py to compare with the project's adapter. No drivedistill import.

    .venv-nuscenes/bin/python tests/nuscenes_devkit_check.py ROOT VERSION
"""

import json
import sys

import numpy as np
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

root, version = sys.argv[1], sys.argv[2]
nusc = NuScenes(version=version, dataroot=root, verbose=False)
out = {"scenes": sorted(s["name"] for s in nusc.scene), "samples": {}}
splits = create_splits_scenes()
out["mini_train_has"] = {s["name"]: s["name"] in splits["mini_train"] for s in nusc.scene}
for sample in nusc.sample:
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    boxes = {}
    for ann_token in sample["anns"]:
        box = nusc.get_box(ann_token)  # global frame
        box.translate(-np.array(pose["translation"]))
        box.rotate(Quaternion(pose["rotation"]).inverse)  # → ego frame of the LIDAR_TOP keyframe
        yaw = box.orientation.yaw_pitch_roll[0]
        boxes[nusc.get("sample_annotation", ann_token)["instance_token"]] = [
            float(box.center[0]),
            float(box.center[1]),
            float(yaw),
            float(box.wlh[1]),
            float(box.wlh[0]),
        ]
    cs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(lidar["token"]))
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)  # LIDAR_TOP → ego frame, the devkit's way
    pc.translate(np.array(cs["translation"]))
    xyz = pc.points[:3].T.astype(np.float64)
    cam = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    out["samples"][sample["token"]] = {
        "boxes": boxes,
        "cam_front": nusc.get_sample_data_path(cam["token"]),
        "lidar_ego": {"count": len(xyz), "mean": xyz.mean(0).tolist() if len(xyz) else [0.0, 0.0, 0.0]},
        "category_names": sorted({nusc.get("sample_annotation", a)["category_name"] for a in sample["anns"]}),
    }
print(json.dumps(out))
