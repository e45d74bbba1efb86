"""Pictures for the report: validation scenes with GT / baseline / distilled plans drawn on the front
camera and the BEV, training curves read back from TensorBoard, the closed-loop GIF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.pipeline.cache import Artifact
from drivedistill.pipeline.config import StudyConfig
from drivedistill.report import ReportAssets

# plan colours on the panels (RGB in [0, 1]); GT first, then models in config order
GT_COLOUR = (0.1, 0.8, 0.2)
MODEL_COLOURS = [
    (0.2, 0.4, 1.0),
    (1.0, 0.2, 0.2),
    (1.0, 0.6, 0.0),
    (0.7, 0.2, 0.9),
    (0.0, 0.8, 0.8),
    (0.9, 0.9, 0.1),
]


def _predictions(evaluated: Artifact | None) -> dict[str, np.ndarray]:
    """token → (8, 3) plan, as saved by the eval stage (predictions.npz)."""
    path = evaluated.path / "predictions.npz" if evaluated is not None else None
    if path is None or not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {str(t): p for t, p in zip(z["tokens"], z["plans"])}


def scene_panel(
    scene: Any,
    plans: list[tuple[str, tuple[float, float, float], np.ndarray]],
    world_cfg: dict[str, Any],
    path: Path,
) -> None:
    """Front camera and BEV side by side with every plan overlaid; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drivedistill.config import from_dict
    from drivedistill.world.bev import BevConfig, ego_to_pixels
    from drivedistill.world.camera import CameraConfig, project_points

    cam = from_dict(CameraConfig, world_cfg.get("camera", {}), "world.camera")
    bev = from_dict(BevConfig, world_cfg.get("bev", {}), "world.bev")
    ai = scene.agent_input
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100, gridspec_kw={"width_ratios": [2, 1]})
    axes[0].imshow(ai.camera)
    # the labelled BEV (privileged, readable) when the sample has one; else the students' LiDAR histogram
    pv = scene.privileged
    if pv is not None and pv.labelled_bev is not None:
        axes[1].imshow(pv.labelled_bev)
    else:
        from drivedistill.world.lidar import lidar_rgb

        axes[1].imshow(
            lidar_rgb(ai.bev) if ai.bev.shape[-1] == 2 else ai.bev[..., : min(3, ai.bev.shape[-1])]
        )
    for label, colour, traj in plans:
        pts = np.concatenate([np.zeros((1, 2)), traj[:, :2]], 0)
        uv, ok = project_points(np.concatenate([pts, np.zeros((len(pts), 1))], 1), cam)
        axes[0].plot(uv[ok, 0], uv[ok, 1], "-o", color=colour, ms=2.5, lw=1.5, label=label)
        pix = ego_to_pixels(pts, bev)
        axes[1].plot(pix[:, 0], pix[:, 1], "-o", color=colour, ms=2.5, lw=1.5)
    axes[0].set_xlim(0, ai.camera.shape[1])
    axes[0].set_ylim(ai.camera.shape[0], 0)
    axes[1].set_xlim(0, ai.bev.shape[1])
    axes[1].set_ylim(ai.bev.shape[0], 0)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="upper right")
    event = scene.meta.get("event", "")
    axes[0].set_title(
        f"{scene.token} · {scene.meta.get('scenario', '')} · {event} · command {int(ai.command)}", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def training_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, total loss) scalars of a training run, from its TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir / "tensorboard"
    if not tb.exists():
        return []
    acc = EventAccumulator(str(tb))
    acc.Reload()
    if "loss/loss" not in acc.Tags().get("scalars", []):  # the total loss, as train/loop.py logs it
        return []
    return [(e.step, e.value) for e in acc.Scalars("loss/loss")]


def build_assets(
    cfg: StudyConfig,
    out: Path,
    store_path: Path,
    trained: dict[tuple[str, int], Artifact],
    evaluated: dict[tuple[str, int], Artifact],
    recipes: dict[str, Artifact],
) -> ReportAssets:
    from drivedistill.data.store import SceneStore

    assets = ReportAssets()
    seed = cfg.seeds[0]
    store = SceneStore(store_path)
    world_cfg = store.config.get("world", {})
    tokens = store.tokens(cfg.eval.split)
    shown = [m for m in cfg.models if m.method != "none"][: len(MODEL_COLOURS)]
    preds = {m.name: _predictions(evaluated.get((m.name, seed))) for m in shown}
    panel_dir = out / "figures"
    panel_dir.mkdir(parents=True, exist_ok=True)
    # spread the panels over the validation split, preferring scenes with an event only the camera reveals
    scenes = [store.load(t) for t in tokens[:: max(1, len(tokens) // 40)]]
    eventful = [s for s in scenes if s.meta.get("event") not in (None, "", "lane_follow")]
    for scene in (eventful + [s for s in scenes if s not in eventful])[: cfg.eval.scene_panels]:
        assert scene.privileged is not None
        plans = [("GT", GT_COLOUR, scene.privileged.future_trajectory)]
        plans += [
            (name, MODEL_COLOURS[i], preds[name][scene.token])
            for i, name in enumerate(preds)
            if scene.token in preds[name]
        ]
        path = panel_dir / f"scene-{scene.token}.png"
        scene_panel(scene, plans, world_cfg, path)
        assets.scene_panels.append((f"{scene.token}: GT (green) and each model's plan (seed {seed})", path))
    for (name, s), art in trained.items():
        if s == seed:
            curve = training_curve(art.path)
            if curve:
                assets.curves[name] = curve
    # the closed-loop GIF of the first distilled model (else the baseline), seed 0
    order = [m.name for m in cfg.models if m.name != cfg.baseline] + [cfg.baseline]
    for name in order:
        ev = evaluated.get((name, seed))
        if ev is not None and (ev.path / "closedloop.gif").exists():
            assets.gif = ev.path / "closedloop.gif"
            assets.gif_caption = f"closed-loop episode driven by {name} (seed {seed}): camera + BEV"
            break
    for art in recipes.values():
        for fig in sorted(art.path.glob("*.png")):
            assets.extra_figures.append((f"{art.name}: {fig.stem}", fig))
    notes_path = out / "notes.json"
    if notes_path.exists():
        assets.notes = list(json.loads(notes_path.read_text()))
    return assets
