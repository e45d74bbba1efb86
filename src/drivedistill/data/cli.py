"""`drivedistill data`: inspect a SceneStore.

drivedistill data validate DIR [--deep]          exit 1 naming every missing/corrupt shard, else 0
drivedistill data show DIR --index I --out x.png camera, LiDAR BEV and labelled BEV with the ego path, text
drivedistill data stats DIR                      samples per split, scenario, event and command
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from drivedistill.data.store import SceneStore, StoreError
from drivedistill.types import Command, Scene

# labelled BEV channel colours (RGB) composited in order; world/bev.py: 0 drivable, 1 markings, 2 vehicles
BEV_COLOURS = [(70, 70, 78), (235, 235, 235), (60, 140, 255), (255, 170, 40)]
PANEL_GAP = 8  # [px] between the camera and the BEV panels
# edges of a box's 8 corners (bottom 0-3, top 4-7) drawn in the camera
BOX_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
FUTURE_COLOUR, PAST_COLOUR = (255, 40, 200), (40, 220, 255)
BOX_COLOUR = (255, 230, 0)
FONT_SIZE = 14  # [px]
MIN_CAMERA_WIDTH = 512  # [px] the camera is upscaled by an integer factor to at least this width


def _validate(args: argparse.Namespace) -> int:
    store = SceneStore(args.dir)
    problems = store.validate(deep=args.deep)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(
            f"{args.dir}: {len(problems)} problem(s); re-run the collection into it to rewrite bad shards",
            file=sys.stderr,
        )
        return 1
    st = store.stats
    print(
        f"{args.dir}: valid ({'deep' if args.deep else 'sha256'} check) — {len(store)} samples, "
        f"{len(store.manifest['shards'])} shards, train {len(store.tokens('train'))} / val {len(store.tokens('val'))}, "
        f"{st['num_episodes']} episodes"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    store = SceneStore(args.dir)
    st = store.stats
    size = sum(int(s["bytes"]) for s in store.manifest["shards"])
    print(f"{args.dir}: {st['num_samples']} samples, {st['num_episodes']} episodes, {size / 1e6:.1f} MB")
    print(f"episodes per split: {st['episodes_per_split']}")
    rate = st["expert_collision_free_rate"]
    print(f"expert collision-free rate: {'n/a' if rate is None else f'{rate:.3f}'}")
    for key in ("split", "scenario", "event", "command"):
        counts: dict[str, int] = st["samples_per"].get(key, {})
        print(f"samples per {key}:")
        if not counts:
            print("  (none)")
        for name, n in counts.items():
            print(f"  {name:<16} {n:>7}  {100 * n / max(st['num_samples'], 1):5.1f}%")
    return 0


def _lidar_rgb(bev: np.ndarray) -> np.ndarray:
    """The students' BEV → picture: the LiDAR height histogram (world/lidar.py, low returns orange, high
    returns cyan on black); a raster with another channel count is painted as `_bev_rgb` does."""
    from drivedistill.world.lidar import LIDAR_CHANNELS, lidar_rgb

    return lidar_rgb(bev) if bev.shape[2] == len(LIDAR_CHANNELS) else _bev_rgb(bev)


def _bev_rgb(bev: np.ndarray) -> np.ndarray:
    """(Hb, Wb, C) uint8 raster → (Hb, Wb, 3) uint8 picture, channels painted in order over black."""
    out = np.zeros((*bev.shape[:2], 3), np.float32)
    for c in range(bev.shape[2]):
        alpha = bev[:, :, c : c + 1].astype(np.float32) / 255.0
        out = out * (1 - alpha) + alpha * np.array(BEV_COLOURS[c % len(BEV_COLOURS)], np.float32)
    return out.astype(np.uint8)


def _polyline(draw: ImageDraw.ImageDraw, pts: np.ndarray, colour: tuple[int, int, int], scale: float) -> None:
    xy = [(float(u) * scale, float(v) * scale) for u, v in pts]
    if len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
    for u, v in xy:
        draw.ellipse((u - 3, v - 3, u + 3, v + 3), fill=colour)


def describe(scene: Scene, store: SceneStore, args: argparse.Namespace) -> list[str]:
    """Text lines shown under the images. Hook: VLM-AD annotations of the sample are appended here
    (reading them belongs to drivedistill.annotate; add its option in `add_show_arguments`)."""
    ai = scene.agent_input
    speed, accel, yaw_rate = (float(v) for v in ai.ego_status)
    scenario = scene.privileged.scenario if scene.privileged is not None else scene.meta.get("scenario", "?")
    lines = [
        f"{scene.token}  ({store.split_of(scene.token)}, episode {scene.episode}, frame {scene.frame_index})",
        f"scenario {scenario}   event {scene.meta.get('event') or 'none'}   command {Command(ai.command).name}",
        f"speed {speed:.1f} m/s   accel {accel:+.2f} m/s^2   yaw rate {yaw_rate:+.3f} rad/s",
        "future (magenta) and past (cyan) ego poses"
        if scene.privileged is not None
        else "no privileged part stored",
    ]
    from drivedistill.annotate.cache import annotation_lines
    from drivedistill.annotate.cli import default_out

    annotations = getattr(args, "annotations", None) or default_out(store.root)
    return lines + annotation_lines(annotations, store.sample_hash(scene.token))


def _camera_projector(scene: Scene, store: SceneStore) -> Any:
    """(N, 3) ego-frame points → ((N, 2) pixels of the stored image, (N,) in front): the world's camera
    model, or the pinhole model a source stored in meta["camera_model"] (nuScenes CAM_FRONT)."""
    model = scene.meta.get("camera_model")
    if model is not None:
        K, T = np.asarray(model["K"], np.float64), np.linalg.inv(np.asarray(model["T_ego_cam"], np.float64))

        def project(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pc = np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]
            uvw = pc @ K.T
            return uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-6), pc[:, 2] > 0.5

        return project
    from drivedistill.config import from_dict
    from drivedistill.world.camera import CameraConfig, project_points

    world: dict[str, Any] = store.config.get("world", {})
    if "camera" not in world:
        return None
    cam = from_dict(CameraConfig, world["camera"])
    return lambda points: project_points(points, cam)


def _bev_config(store: SceneStore) -> Any:
    from drivedistill.config import from_dict
    from drivedistill.world.bev import BevConfig

    cfg = store.config
    section = cfg.get("world", {}).get("bev") or cfg.get("source", {}).get("bev")
    if section is None:
        raise StoreError(f"{store.root}: manifest config has no world.bev / source.bev; cannot draw the BEV")
    return from_dict(BevConfig, section)


def render_sample(scene: Scene, store: SceneStore, lines: list[str], scale: int = 0) -> Image.Image:
    """Side by side, same height: the front camera, the students' LiDAR BEV (the height histogram,
    world/lidar.py: low returns orange, high cyan) and, when the sample has one, the privileged labelled
    BEV (world/bev.py: drivable grey, markings white, vehicles blue) — both BEVs x forward = up on the same
    grid — with the past and future ego poses overlaid on every view and text lines below. `scale`
    upscales the camera (0 = to at least MIN_CAMERA_WIDTH px). Stores from a source with a camera model in
    meta (nuScenes) also get the t = 0 agent boxes drawn (yellow) in every view, as 1.5 m tall boxes on the
    ground plane of the ego frame."""
    from drivedistill.world.bev import box_polygon, ego_to_pixels

    project = _camera_projector(scene, store)
    bev_cfg = _bev_config(store)
    ai = scene.agent_input
    scale = scale or -(-MIN_CAMERA_WIDTH // ai.camera.shape[1])
    camera = Image.fromarray(ai.camera).resize(
        (ai.camera.shape[1] * scale, ai.camera.shape[0] * scale), Image.Resampling.NEAREST
    )
    bev_scale = camera.height / ai.bev.shape[0]
    size = (round(ai.bev.shape[1] * bev_scale), camera.height)
    absent = "lidar_bev" in scene.meta.get("absent", [])
    panels = [
        (
            Image.fromarray(_lidar_rgb(ai.bev)).resize(size, Image.Resampling.NEAREST),
            "LiDAR BEV (student input)" + (": absent, zeros" if absent else ""),
        )
    ]
    labelled = scene.privileged.labelled_bev if scene.privileged is not None else None
    if labelled is not None:
        picture = Image.fromarray(_bev_rgb(labelled)).resize(size, Image.Resampling.NEAREST)
        panels.append((picture, "labelled BEV (privileged)"))
    # overlays are drawn on each view's own image, so they stay inside it
    cam_draw = ImageDraw.Draw(camera)
    bev_draws = [ImageDraw.Draw(picture) for picture, _ in panels]
    paths = [(PAST_COLOUR, np.vstack([ai.ego_history[:, :2], np.zeros((1, 2), np.float32)]))]
    if scene.privileged is not None:
        fut = scene.privileged.future_trajectory[scene.privileged.future_valid, :2]
        paths.append((FUTURE_COLOUR, np.vstack([np.zeros((1, 2), np.float32), fut])))
    for colour, xy in paths:
        ground = np.hstack([xy, np.zeros((len(xy), 1), np.float32)])
        if project is not None:
            uv, in_front = project(ground)
            _polyline(cam_draw, uv[in_front], colour, scale)
        for d in bev_draws:
            _polyline(d, ego_to_pixels(xy, bev_cfg) * bev_scale, colour, 1.0)
    if scene.privileged is not None and "camera_model" in scene.meta:
        agents = scene.privileged.agents[0][scene.privileged.agents_valid[0]]
        for box in agents:
            corners = box_polygon(box[:5])
            pix = ego_to_pixels(corners, bev_cfg) * bev_scale
            for d in bev_draws:
                d.polygon([(float(u), float(v)) for u, v in pix], outline=BOX_COLOUR)
            if project is None:
                continue
            pts = np.vstack([np.c_[corners, np.zeros(4)], np.c_[corners, np.full(4, 1.5)]])
            uv, in_front = project(pts)
            if not in_front.all():
                continue
            uv = uv * scale
            for a, b in BOX_EDGES:
                cam_draw.line([tuple(uv[a]), tuple(uv[b])], fill=BOX_COLOUR, width=1)
    font = ImageFont.load_default(size=FONT_SIZE)
    line_h = FONT_SIZE + 6
    text_h = line_h * len(lines) + 12
    width = camera.width + sum(PANEL_GAP + p.width for p, _ in panels)
    canvas = Image.new("RGB", (width, camera.height + text_h), (20, 20, 24))
    canvas.paste(camera, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = camera.width
    for picture, title in panels:
        x += PANEL_GAP
        canvas.paste(picture, (x, 0))
        draw.text((x + 4, 2), title, fill=(230, 230, 230), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        x += picture.width
    for i, line in enumerate(lines):
        draw.text((8, camera.height + 6 + line_h * i), line, fill=(230, 230, 230), font=font)
    return canvas


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path)
    parser.add_argument("--index", type=int, default=0, help="sample index in store order")
    parser.add_argument("--split", choices=["train", "val"], help="index within this split")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--scale", type=int, default=0, help="camera upscaling factor (0 = auto)")
    parser.add_argument(
        "--annotations", type=Path, help="VLM-AD annotation cache (default: <dir>_annotations when it exists)"
    )


def _show(args: argparse.Namespace) -> int:
    store = SceneStore(args.dir)
    tokens = store.tokens(args.split)
    if not 0 <= args.index < len(tokens):
        raise StoreError(
            f"--index {args.index} out of range: {len(tokens)} samples in split {args.split or 'all'}"
        )
    scene = store.load(tokens[args.index])
    image = render_sample(scene, store, describe(scene, store, args), args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height}) for {scene.token}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drivedistill data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check every shard against manifest.json")
    p.add_argument("dir", type=Path)
    p.add_argument("--deep", action="store_true", help="also decode every row and re-check its content hash")
    p.set_defaults(func=_validate)
    p = sub.add_parser("show", help="render one sample to a PNG")
    add_show_arguments(p)
    p.set_defaults(func=_show)
    p = sub.add_parser("stats", help="samples per split, scenario, event, command")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_stats)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
