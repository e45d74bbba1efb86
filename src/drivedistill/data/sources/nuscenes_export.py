"""Export the default world as a dataset in the nuScenes format (13 JSON tables, JPEGs, CAN bus), so
nuScenes tools — this project's `nuscenes` source, nuscenes-devkit, UniAD/VAD data converters — read the
embedded world like nuScenes.

    drivedistill collect --source nuscenes ...  reads what this writes (round trip tested)
    python -m drivedistill.data.sources.nuscenes_export --preset smoke --out DIR [--world.num_episodes=4]

Mapping (one world episode = one nuScenes scene named by the episode id, one log each, a keyframe per
0.5 s sample; sample token = md5 of the world token):
    ego_pose      the world's ego reference point (the box centre, world/ego.py) chained from each sample's
                  logged future pose (sample k+1 = future_trajectory[0] of sample k), starting at the origin
    CAM_FRONT     the world's front camera image as JPEG (quality `JPEG_QUALITY`), with its intrinsics and
                  mount (world/camera.py) as calibrated_sensor
    LIDAR_TOP     the world's ray-cast LiDAR returns of the keyframe (world/lidar.py; `EpisodeResult.
                  lidar_points`) as a nuScenes .pcd.bin (N, 5) float32 x, y, z, intensity, ring in the LiDAR
                  frame, mounted like nuScenes' (x right, y forward, 1.8 m above the ego origin on the
                  ground); intensity and ring are 0 (the world's sensor has neither). The `nuscenes` source
                  splats them back into the students' BEV. Scenes given without their points (plain lists)
                  get a zero-point file: the table format needs the channel for the sample's pose
    annotations   the sample's agent boxes at t = 0 (world classes → vehicle.car, human.pedestrian.adult,
                  vehicle.bicycle, movable_object.barrier; height 1.5 m); instances are linked across samples
                  by matching each box's logged +0.5 s pose with the next sample's boxes (≤ 1 cm)
    can_bus       scene_pose.json messages at the keyframes: vel[0] = speed, accel[0], rotation_rate[2]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from drivedistill.data.sources._nuscenes_tables import NuScenesTableWriter, token
from drivedistill.types import AgentClass, Scene
from drivedistill.world.camera import CameraConfig
from drivedistill.world.episode import EpisodeResult

JPEG_QUALITY = 95
CLASS_CATEGORY = {
    AgentClass.VEHICLE: "vehicle.car",
    AgentClass.PEDESTRIAN: "human.pedestrian.adult",
    AgentClass.BICYCLE: "vehicle.bicycle",
    AgentClass.STATIC: "movable_object.barrier",
}
BOX_HEIGHT = 1.5  # [m]
T_EGO_LIDAR = np.array(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.8], [0.0, 0.0, 0.0, 1.0]]
)
T0_US = 1_600_000_000_000_000  # [µs] timestamp of every scene's first sample


def _se2(pose: np.ndarray) -> np.ndarray:
    """(x, y, yaw) → 4 × 4 transform on the ground plane."""
    c, s = np.cos(pose[2]), np.sin(pose[2])
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:2, 3] = pose[:2]
    return T


def sample_token(world_token: str) -> str:
    return token("world-sample", world_token)


def lidar_file_points(points_ego: np.ndarray) -> np.ndarray:
    """(N, 3) world LiDAR returns (ego frame, z above the ground) → (N, 5) float32 .pcd.bin rows x, y, z,
    intensity = 0, ring = 0 in the LIDAR_TOP frame `T_EGO_LIDAR`."""
    T = np.linalg.inv(T_EGO_LIDAR)
    out = np.zeros((len(points_ego), 5), np.float32)
    out[:, :3] = np.asarray(points_ego, np.float64)[:, :3] @ T[:3, :3].T + T[:3, 3]
    return out


def export_scenes(
    episodes: Iterable[list[Scene] | EpisodeResult],
    camera: CameraConfig,
    out: str | Path,
    version: str = "v1.0-mini",
) -> Path:
    """Write episodes (each an `EpisodeResult`, or a list of Scenes in frame order, 0.5 s apart) as nuScenes
    `version` under `out`; returns `out`. Only `EpisodeResult`s carry the LiDAR returns (module docstring)."""
    root = Path(out)
    w = NuScenesTableWriter(root, version)
    T_ego_cam = np.eye(4)
    T_ego_cam[:3, :3] = camera.rotation().T  # columns: the camera axes in the ego frame
    T_ego_cam[:3, 3] = camera.origin()
    for d in ("samples/CAM_FRONT", "samples/LIDAR_TOP", "can_bus"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for episode in episodes:
        if isinstance(episode, EpisodeResult):
            scenes, points = episode.scenes, episode.lidar_points
            if len(points) != len(scenes):
                raise ValueError(
                    f"episode {episode.episode}: {len(points)} LiDAR sweeps for {len(scenes)} scenes; "
                    "export the EpisodeResult that run_episode returned"
                )
        else:
            scenes, points = episode, []
        if not scenes:
            continue
        name = scenes[0].episode
        log = w.log(name, "drivedistill-world", "2026-01-01")
        scene_tok = w.scene(name, log, f"default world episode {name}")
        cs_cam = w.calibrated_sensor(name, "CAM_FRONT", "camera", T_ego_cam, camera.intrinsics())
        cs_lidar = w.calibrated_sensor(name, "LIDAR_TOP", "lidar", T_EGO_LIDAR, None)
        T = np.eye(4)
        prev_boxes: list[tuple[str, np.ndarray]] = []  # (instance key, global +0.5 s pose of the box)
        can = []
        for k, s in enumerate(scenes):
            pv = s.privileged
            if pv is None:
                raise ValueError(f"scene {s.token}: exporting needs the privileged part (poses, boxes)")
            if k > 0:
                prev = scenes[k - 1].privileged
                assert prev is not None
                T = T @ _se2(prev.future_trajectory[0].astype(np.float64))
            ts = T0_US + 500_000 * k
            smp = w.sample(scene_tok, ts, tok=sample_token(s.token))
            pose = w.ego_pose(f"{smp}/ego", T, ts)
            cam_file = f"samples/CAM_FRONT/{name}__CAM_FRONT__{ts}.jpg"
            Image.fromarray(s.agent_input.camera).save(root / cam_file, quality=JPEG_QUALITY)
            h, width = s.agent_input.camera.shape[:2]
            w.sample_data(smp, "CAM_FRONT", pose, cs_cam, ts, cam_file, (width, h))
            lidar_file = f"samples/LIDAR_TOP/{name}__LIDAR_TOP__{ts}.pcd.bin"
            (lidar_file_points(points[k]) if points else np.zeros((0, 5), np.float32)).tofile(
                root / lidar_file
            )
            w.sample_data(smp, "LIDAR_TOP", pose, cs_lidar, ts, lidar_file)
            speed, accel, yaw_rate = (float(v) for v in s.agent_input.ego_status)
            can.append({"utime": ts, "vel": [speed, 0.0, 0.0], "accel": [accel, 0.0, 0.0], "rotation_rate": [0.0, 0.0, yaw_rate],
                        "pos": [float(v) for v in T[:3, 3]], "orientation": [1.0, 0.0, 0.0, 0.0]})  # fmt: skip
            boxes: list[tuple[str, np.ndarray]] = []
            agents = pv.agents.astype(np.float64)
            for a in np.flatnonzero(pv.agents_valid[0]):
                box = agents[0, a]
                G = T @ _se2(box[:3])
                key = f"{name}/{k}/{a}"
                for prev_key, prev_pose in prev_boxes:
                    if np.linalg.norm(prev_pose[:2, 3] - G[:2, 3]) < 0.01:
                        key = prev_key
                        break
                w.annotation(
                    smp, key, CLASS_CATEGORY[AgentClass(int(box[7]))], G, (box[4], box[3], BOX_HEIGHT)
                )
                if pv.agents_valid[1, a]:
                    boxes.append((key, T @ _se2(agents[1, a, :3])))
            prev_boxes = boxes
        (root / "can_bus" / f"{name}_pose.json").write_text(json.dumps(can))
    w.write()
    return root


def main(argv: list[str] | None = None) -> int:
    from drivedistill.config import ConfigError
    from drivedistill.world.collect import resolve_world_config
    from drivedistill.world.episode import run_episode

    parser = argparse.ArgumentParser(
        prog="python -m drivedistill.data.sources.nuscenes_export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args(argv)
    try:
        world = resolve_world_config(args.preset, args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    episodes = (run_episode(world, i) for i in range(world.num_episodes))
    export_scenes(episodes, world.camera, args.out)
    print(f"wrote a nuScenes-format dataset of {world.num_episodes} world episodes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
