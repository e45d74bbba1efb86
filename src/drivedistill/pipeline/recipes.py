"""Recipe stages that run before students train: they turn the store into per-sample targets (extras)
and teacher checkpoints. Each runs only when a listed model's method needs it.

| stage      | methods that need it                    | writes                                        |
|------------|-----------------------------------------|-----------------------------------------------|
| annotate   | vlm_ad                                  | annotation cache, text embeddings → extras    |
| latent     | latent_vla, latent_vla_distill          | latent action model, VLM teacher, its logits  |
| evodrive   | vla_sft, evodrive                       | perception-pretrained VLA, oracle teacher     |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import StudyConfig
from drivedistill.pipeline.extras import save_extras

RecipeStage = Callable[[StageRunner, StudyConfig, Artifact, dict[str, Artifact]], Artifact]


def annotate_stage(runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]) -> Artifact:
    """VLM-AD: annotate every sample (rules annotator by default), embed the texts, write the extras."""
    from drivedistill.annotate.cli import annotate_store, build_annotator, store_camera
    from drivedistill.data.store import SceneStore
    from drivedistill.methods.vlm_ad import store_extras
    from drivedistill.models.text_encoder import TextEncoder, TextEncoderConfig

    name = str(cfg.annotate.get("annotator", "rules"))
    options = dict(cfg.annotate.get("options", {}))
    stage_cfg = {"annotator": name, "options": options, "text_encoder": cfg.annotate.get("text_encoder", {})}

    def run(d: Path) -> dict[str, Any]:
        from drivedistill.config import from_dict

        scenes = SceneStore(Path(store.summary["store"]))
        annotator = build_annotator(name, [f"--annotator.{k}={v}" for k, v in options.items()], camera=store_camera(scenes.config))
        summary = annotate_store(scenes, annotator, d / "annotations")  # resumable: the cache keeps finished samples
        enc_cfg = from_dict(TextEncoderConfig, {**cfg.annotate.get("text_encoder", {}), "cache_dir": str(d / "text_cache")}, "annotate.text_encoder")
        extras = store_extras(scenes, None, d / "annotations", TextEncoder(enc_cfg), summary.key)
        save_extras(d / "extras.npz", extras)
        return {"annotator_key": summary.key, "done": summary.done, "failed": summary.failed, "cached": summary.cached}

    return runner.run("annotate", stage_cfg, [store], run)


# (stage name, methods needing it, function), in pipeline order
RECIPE_STAGES: list[tuple[str, set[str], RecipeStage]] = [
    ("annotate", {"vlm_ad"}, annotate_stage),
]

# which recipe artifacts (and their extras) each method reads
_NEEDS: dict[str, tuple[str, ...]] = {
    "vlm_ad": ("annotate",),
}


def extras_for(method: str) -> tuple[str, ...]:
    return _NEEDS.get(method, ())
