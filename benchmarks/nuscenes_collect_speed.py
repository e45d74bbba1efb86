"""Time `drivedistill collect --source nuscenes` per sample on real nuScenes files, extrapolated to 1000.

The one real keyframe of ../shared/data/nuscenes_keyframe (six 1600 × 900 JPEGs, a 34k-point LIDAR_TOP
sweep, 69 boxes) is written `--samples` times as consecutive keyframes of `--scenes` scenes (same files,
poses shifted 2 m per keyframe), so every sample costs what a real one does: 1 + 3 camera decodes (the
image and the oracle's +1/+2/+3 s frames), one sweep, the boxes of 9 keyframes, Parquet encoding.

    PYTHONPATH=src:. python benchmarks/nuscenes_collect_speed.py [--samples 40] [--scenes 2] [--six]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tests.nuscenes_fixture import LABEL_CATEGORY, LOG, _rz, load_info

from drivedistill.data.collect import collect_source
from drivedistill.data.sources._nuscenes_tables import NuScenesTableWriter
from drivedistill.data.sources.nuscenes import CAMERAS, NuScenesConfig, NuScenesSource

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuscenes_keyframe"


def write_repeated(out: Path, samples: int, scenes: int) -> None:
    info = load_info(SRC)
    w = NuScenesTableWriter(out, "v1.0-mini")
    T_ego_lidar = np.asarray(info["lidar_points"]["lidar2ego"], np.float64)
    for d in ["LIDAR_TOP", *info["images"]]:
        (out / "samples" / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(SRC / info["lidar_points"]["lidar_path"], out / "samples" / "LIDAR_TOP")
    for ch, cam in info["images"].items():
        shutil.copy(SRC / cam["img_path"], out / "samples" / ch)
    per_scene = samples // scenes
    for sc in range(scenes):
        log = w.log(f"{LOG}-{sc}", "singapore-onenorth", "2018-07-24")
        scene = w.scene(f"scene-{sc:04d}", log)
        for k in range(per_scene):
            ts = 1_532_402_927_000_000 + 500_000 * k
            T = np.asarray(info["ego2global"], np.float64).copy()
            T[:3, 3] += T[:3, 0] * 2.0 * k  # 2 m forward per keyframe
            smp = w.sample(scene, ts)
            cs = w.calibrated_sensor(LOG, "LIDAR_TOP", "lidar", T_ego_lidar, None)
            w.sample_data(smp, "LIDAR_TOP", w.ego_pose(f"{smp}/l", T, ts), cs, ts, f"samples/LIDAR_TOP/{info['lidar_points']['lidar_path']}")  # fmt: skip
            for ch, cam in info["images"].items():
                ccs = w.calibrated_sensor(LOG, ch, "camera", np.asarray(cam["cam2ego"]), cam["cam2img"])
                w.sample_data(smp, ch, w.ego_pose(f"{smp}/{ch}", T, ts), ccs, ts, f"samples/{ch}/{cam['img_path']}", (1600, 900))  # fmt: skip
            for a, inst in enumerate(info["instances"]):
                x, y, z, length, width, height, yaw = inst["bbox_3d"]
                B = np.eye(4)
                B[:3, :3], B[:3, 3] = _rz(yaw), (x, y, z)
                cat = LABEL_CATEGORY[int(inst["bbox_label_3d"])]
                w.annotation(smp, f"{sc}/{a}", cat, T @ T_ego_lidar @ B, (width, length, height))
    w.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--six", action="store_true", help="the six cameras (2 × 3 mosaic)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nuscenes"
        write_repeated(root, args.samples, args.scenes)
        cams = list(CAMERAS) if args.six else ["CAM_FRONT"]
        source = NuScenesSource(NuScenesConfig(root=str(root), cameras=cams))
        start = time.perf_counter()
        manifest = collect_source(source, Path(tmp) / "store", episodes_per_shard=1, progress=False)
        secs = time.perf_counter() - start
    n = manifest["stats"]["num_samples"]
    print(f"{n} samples ({'six cameras' if args.six else 'CAM_FRONT'}) in {secs:.1f} s: "
          f"{secs / n:.3f} s/sample → {1000 * secs / n / 60:.1f} min per 1000 samples (one process)")  # fmt: skip


if __name__ == "__main__":
    main()
