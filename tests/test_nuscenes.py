"""nuScenes adapter on a real keyframe (../shared/data/nuscenes_keyframe) written as a one-sample dataset in
the nuScenes table format (tests/nuscenes_fixture.py), cross-checked against nuscenes-devkit when its own
environment exists (`make nuscenes-env`, or DRIVEDISTILL_NUSCENES_PYTHON=/path/to/python)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from drivedistill import registry
from drivedistill.data.collect import collect_source
from drivedistill.data.dataset import collate
from drivedistill.data.sources.base import SourceError
from drivedistill.data.sources.nuscenes import (
    NuScenesConfig,
    NuScenesSource,
    ego_to_camera,
    global_to_ego,
)
from drivedistill.data.store import SceneStore
from drivedistill.types import NUM_FUTURE, AgentClass
from tests.nuscenes_fixture import LOG, SCENE, load_info, write_keyframe_dataset

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuscenes_keyframe"
pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason=f"nuScenes keyframe not found at {SRC}")
REPO = Path(__file__).resolve().parents[1]


def devkit_python() -> str | None:
    for p in (
        os.environ.get("DRIVEDISTILL_NUSCENES_PYTHON", ""),
        str(REPO / ".venv-nuscenes" / "bin" / "python"),
    ):
        if p and Path(p).exists():
            return p
    return None


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_keyframe_dataset(SRC, tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def source(root: Path) -> NuScenesSource:
    return registry.build("source", "nuscenes", NuScenesConfig(root=str(root)))


@pytest.fixture(scope="module")
def episode(source: NuScenesSource):  # type: ignore[no-untyped-def]
    return source.load(SCENE)


@pytest.fixture(scope="module")
def scene(source: NuScenesSource, episode):  # type: ignore[no-untyped-def]
    return source.scenes_of(episode)[0]


def test_all_13_tables_and_the_real_image_and_boxes_load(root: Path, scene) -> None:  # type: ignore[no-untyped-def]
    assert len(list((root / "v1.0-mini").glob("*.json"))) == 13
    ai, pv = scene.agent_input, scene.privileged
    assert ai.camera.shape == (128, 256, 3) and ai.camera.std() > 20  # a real photo, not a blank
    assert pv.agents.shape == (9, 69, 8) and pv.agents_valid[0].all() and not pv.agents_valid[1:].any()
    classes = set(pv.agents[0, :, 7].astype(int).tolist())
    assert {AgentClass.VEHICLE, AgentClass.PEDESTRIAN, AgentClass.STATIC} <= classes
    assert not pv.future_valid.any()  # one keyframe: no future, history held at the only pose
    assert scene.meta["history_padded"] == 4 and np.allclose(ai.ego_history, 0.0, atol=1e-6)
    assert scene.meta["ego_status_source"] == "poses"


def test_boxes_in_front_project_where_the_jpeg_shows_them(episode) -> None:  # type: ignore[no-untyped-def]
    """Every box of the ten detection classes whose centre is in front of CAM_FRONT and inside its image is
    one of the pickle's CAM_FRONT instances and projects within 0.5 px of the centre mmdetection3d computed
    for it (measured: 0.0002 px); the one box outside the ten classes (mmdet3d label -1) is not listed."""
    info = load_info(SRC)
    reference = np.array([c["center_2d"] for c in info["cam_instances"]["CAM_FRONT"]])
    s = episode.samples[0]
    _, K, T_ego_cam, T_global_ego_cam = s.cameras["CAM_FRONT"]
    centres = np.stack([b["T_global_box"][:3, 3] for b in s.boxes])
    uv, depth = ego_to_camera(T_ego_cam, K, global_to_ego(T_global_ego_cam, centres))
    inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 1600) & (uv[:, 1] >= 0) & (uv[:, 1] < 900)
    inside &= np.array([b["category"] != "movable_object.debris" for b in s.boxes])
    assert inside.sum() >= 20
    for p in uv[inside]:
        assert np.min(np.linalg.norm(reference - p, axis=1)) < 0.5
    for r in reference:  # and every mmdet3d CAM_FRONT instance (some centred just outside the image) is ours
        assert np.min(np.linalg.norm(uv[depth > 0] - r, axis=1)) < 0.5


def test_lidar_bev_has_returns_at_the_boxes(source: NuScenesSource, episode, scene) -> None:  # type: ignore[no-untyped-def]
    """The students' BEV is the world's 2-channel height histogram of the real sweep: boxes with ≥ 10 LiDAR
    points inside the BEV hit returns in their footprint far more often than the same footprints shifted
    6 m sideways (a control on the same sweep); ground and the ego's own roof are removed (few returns
    overall, none on the ego footprint), and the labelled boxes are only in the privileged raster."""
    from drivedistill.world.bev import box_polygon, ego_to_pixels
    from drivedistill.world.lidar import LIDAR_CHANNELS

    info = load_info(SRC)
    cfg = source.cfg.bev
    bev = scene.agent_input.bev
    assert bev.shape == (cfg.height, cfg.width, len(LIDAR_CHANNELS))
    obstacle = bev.max(-1) > 0
    assert 0.005 < obstacle.mean() < 0.25  # ground removed: 34 k points, a few % of the cells
    assert bev[..., 1].any() and bev[..., 0].any()  # both height bins see something
    ego = ego_to_pixels(np.array([[-1.5, -0.9], [2.5, 0.9]]), cfg)  # the Zoe's footprint (rear-axle frame)
    c0, c1 = sorted(np.floor(ego[:, 0]).astype(int))
    r0, r1 = sorted(np.floor(ego[:, 1]).astype(int))
    assert not obstacle[r0 : r1 + 1, c0 : c1 + 1].any()  # its own roof returns are removed
    labelled = scene.privileged.labelled_bev
    assert labelled is not None and labelled.shape == (cfg.height, cfg.width, 3)
    assert labelled[..., 2].any() and not labelled[..., :2].any()  # boxes only: the map is not read
    pts = np.array([inst["num_lidar_pts"] for inst in info["instances"]])

    def hit(box: np.ndarray) -> bool:
        pix = ego_to_pixels(box_polygon(box), cfg)
        lo, hi = np.floor(pix.min(0)).astype(int) - 1, np.ceil(pix.max(0)).astype(int) + 1
        if (lo < 0).any() or hi[0] >= cfg.width or hi[1] >= cfg.height:
            return False
        return bool(obstacle[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1].any())

    boxes = scene.privileged.agents[0]
    in_range = (np.abs(boxes[:, 0]) < 30) & (np.abs(boxes[:, 1]) < 30) & (pts >= 10)
    assert in_range.sum() >= 5
    hits = np.mean([hit(b) for b in boxes[in_range]])
    shifted = boxes[in_range].copy()
    shifted[:, 1] += 6.0
    control = np.mean([hit(b) for b in shifted])
    assert hits >= 0.9 and hits > control + 0.2


def test_every_camera_student_plans_on_the_real_image(scene) -> None:  # type: ignore[no-untyped-def]
    batch = collate([scene.without_privileged()])
    ran = []
    for entry in registry.entries("student"):
        cfg = entry.default_config()
        if not hasattr(cfg, "bev_channels") and entry.name != "vla":
            continue  # no camera input
        if getattr(cfg, "bev_channels", None) == 0:
            cfg = dataclasses.replace(cfg, bev_channels=scene.agent_input.bev.shape[-1])
        torch.manual_seed(0)
        student = entry.builder(cfg).eval()
        with torch.no_grad():
            plan = student(batch.inputs).trajectory
        assert plan.shape == (1, NUM_FUTURE, 3) and torch.isfinite(plan).all(), entry.name
        ran.append(entry.name)
    assert {"transfuser", "ipad"} <= set(ran)


def test_six_cameras_make_a_2x3_mosaic(root: Path) -> None:
    from drivedistill.data.sources.nuscenes import CAMERAS

    src = NuScenesSource(
        NuScenesConfig(root=str(root), cameras=list(CAMERAS), image_width=64, image_height=32)
    )
    s = src.scenes_of(src.load(SCENE))[0]
    assert s.agent_input.camera.shape == (64, 192, 3)
    assert s.privileged.future_frames.shape == (3, 64, 192, 3)


def test_collect_writes_a_store_and_resumes(root: Path, tmp_path: Path) -> None:
    src = NuScenesSource(NuScenesConfig(root=str(root)))
    first = collect_source(src, tmp_path / "store", progress=False)
    assert first["collected_samples"] == 1
    store = SceneStore(tmp_path / "store")
    assert store.validate(deep=True) == []
    loaded = store.load(store.tokens()[0])
    assert loaded.token == "ca9a282c9e77460f8360f564131a8af5" and loaded.privileged is not None
    again = collect_source(src, tmp_path / "store", progress=False)
    assert again["collected_samples"] == 0  # every shard complete: nothing re-read


def test_bad_inputs_name_the_file_and_the_fix(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "copy"
    shutil.copytree(root, bad)
    with pytest.raises(SourceError, match="versions are"):
        NuScenesConfig(root=str(bad), version="v2.0")
    with pytest.raises(SourceError, match="not a split of v1.0-mini"):
        NuScenesConfig(root=str(bad), split="val")
    with pytest.raises(SourceError, match="drivedistill_splits.json.*make nuscenes-splits"):
        NuScenesSource(NuScenesConfig(root=str(bad), split="mini_train"))
    with pytest.raises(SourceError, match="can_bus/scene-0061_pose.json.*can_bus=auto"):
        src = NuScenesSource(NuScenesConfig(root=str(bad), can_bus="require"))
        src.load(SCENE)
    front = next((bad / "samples" / "CAM_FRONT").glob("*.jpg"))
    front.unlink()
    src = NuScenesSource(NuScenesConfig(root=str(bad)))
    with pytest.raises(SourceError, match=re.escape(f"{front.name}: image missing; extract")):
        src.scenes_of(src.load(SCENE))
    (bad / "v1.0-mini" / "visibility.json").unlink()
    with pytest.raises(SourceError, match="visibility.json: missing table"):
        NuScenesSource(NuScenesConfig(root=str(bad)))
    with pytest.raises(SourceError, match="not found"):
        NuScenesSource(NuScenesConfig(root=str(bad), version="v1.0-trainval"))


def test_official_split_from_a_splits_file(root: Path, tmp_path: Path) -> None:
    (tmp_path / "splits.json").write_text(json.dumps({"mini_train": [SCENE], "mini_val": ["scene-0103"]}))
    cfg = NuScenesConfig(root=str(root), split="mini_train", splits_file=str(tmp_path / "splits.json"))
    assert NuScenesSource(cfg).episodes() == [SCENE]
    with pytest.raises(SourceError, match="split 'mini_val' has no scene"):
        NuScenesSource(dataclasses.replace(cfg, split="mini_val"))


@pytest.mark.skipif(devkit_python() is None, reason="no nuscenes-devkit environment (make nuscenes-env)")
def test_matches_nuscenes_devkit(root: Path, episode, scene) -> None:  # type: ignore[no-untyped-def]
    """nuscenes-devkit (own env) loads the fixture; its ego-frame boxes equal the adapter's (1 mm, 1 mrad)
    and its create_splits_scenes puts this scene in mini_train."""
    out = subprocess.run(
        [str(devkit_python()), str(REPO / "tests" / "nuscenes_devkit_check.py"), str(root), "v1.0-mini"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    ref = json.loads(out.stdout)
    assert ref["scenes"] == [SCENE] and ref["mini_train_has"][SCENE]
    boxes = ref["samples"][scene.token]["boxes"]
    s = episode.samples[0]
    ids = [b["instance"] for b in s.boxes]
    assert sorted(ids) == sorted(boxes)
    for a, inst in enumerate(ids):
        x, y, yaw, length, width = boxes[inst]
        got = scene.privileged.agents[0, a]
        assert np.allclose(got[:2], (x, y), atol=1e-3)
        assert abs(np.angle(np.exp(1j * (got[2] - yaw)))) < 1e-3
        assert np.allclose(got[3:5], (length, width), atol=1e-5)
    # the devkit's LIDAR_TOP → ego transform of the sweep gives the points our BEV is splatted from
    pts = NuScenesSource(NuScenesConfig(root=str(root))).sweep_points(s)
    lidar = ref["samples"][scene.token]["lidar_ego"]
    assert lidar["count"] == len(pts) > 30_000 and np.allclose(lidar["mean"], pts.mean(0), atol=1e-4)
    assert ref["samples"][scene.token]["cam_front"].endswith(s.cameras["CAM_FRONT"][0].name)
    assert LOG in s.cameras["CAM_FRONT"][0].name
