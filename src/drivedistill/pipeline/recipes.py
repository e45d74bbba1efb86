"""Recipe stages that run before students train: they turn the store into per-sample targets (extras)
and teacher checkpoints. Each runs only when a listed model's method needs it.

| stage      | methods that need it                    | writes                                        |
|------------|-----------------------------------------|-----------------------------------------------|
| annotate   | vlm_ad                                  | annotation cache, text embeddings → extras    |
| latent_lam | latent_vla, latent_vla_distill          | latent action model → ego codes (extras)      |
| latent_teacher | latent_vla, latent_vla_distill      | VLM teacher (artifact), its logits (extras)   |
| evodrive_perception | vla_sft, evodrive              | perception-pretrained VLM (student start)     |
| evodrive_oracle | evodrive                           | future-aware oracle teacher (artifact)        |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivedistill.pipeline import recipe_evodrive, recipe_latent
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import StudyConfig
from drivedistill.pipeline.extras import save_extras

RecipeStage = Callable[[StageRunner, StudyConfig, Artifact, dict[str, Artifact]], Artifact]


def annotate_stage(
    runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]
) -> Artifact:
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

        scenes = SceneStore(store.store_dir())
        annotator = build_annotator(
            name, [f"--annotator.{k}={v}" for k, v in options.items()], camera=store_camera(scenes.config)
        )
        summary = annotate_store(
            scenes, annotator, d / "annotations"
        )  # resumable: the cache keeps finished samples
        enc_cfg = from_dict(
            TextEncoderConfig,
            {**cfg.annotate.get("text_encoder", {}), "cache_dir": str(d / "text_cache")},
            "annotate.text_encoder",
        )
        extras = store_extras(scenes, None, d / "annotations", TextEncoder(enc_cfg), summary.key)
        save_extras(d / "extras.npz", extras)
        return {
            "annotator_key": summary.key,
            "done": summary.done,
            "failed": summary.failed,
            "cached": summary.cached,
        }

    return runner.run("annotate", stage_cfg, [store], run)


LATENT = {"latent_vla", "latent_vla_distill"}
EVODRIVE = {"vla_sft", "evodrive"}

# (stage name, methods needing it, function), in pipeline order
RECIPE_STAGES: list[tuple[str, set[str], RecipeStage]] = [
    ("annotate", {"vlm_ad"}, annotate_stage),
    ("latent_lam", LATENT, recipe_latent.lam_stage),
    ("latent_teacher", LATENT, recipe_latent.teacher_stage),
    ("evodrive_perception", EVODRIVE, recipe_evodrive.perception_stage),
    ("evodrive_oracle", {"evodrive"}, recipe_evodrive.oracle_stage),
]

# which recipe artifacts (their extras and named artifacts) each method reads
_NEEDS: dict[str, tuple[str, ...]] = {
    "vlm_ad": ("annotate",),
    "latent_vla": ("latent_lam", "latent_teacher"),
    "latent_vla_distill": ("latent_lam", "latent_teacher"),
    "vla_sft": ("evodrive_perception",),
    "evodrive": ("evodrive_perception", "evodrive_oracle"),
}


def extras_for(method: str) -> tuple[str, ...]:
    return _NEEDS.get(method, ())


def student_paths(deps: list[Artifact], student: str) -> dict[str, Any]:
    """Student config overrides that point at recipe artifacts (e.g. the VLA's perception-pretrained
    VLM), with paths made absolute."""

    def absolute(node: Any, base: Path) -> Any:
        return {k: absolute(v, base) for k, v in node.items()} if isinstance(node, dict) else str(base / node)

    out: dict[str, Any] = {}
    for a in deps:
        node = a.summary.get("student_paths", {}).get(student)
        if node:
            from drivedistill.config import deep_merge

            out = deep_merge(out, absolute(node, a.path))
    return out


def method_artifacts(deps: list[Artifact]) -> dict[str, Path]:
    """Named artifacts (e.g. "teacher/vlm") the recipe stages declared, as absolute paths."""
    return {name: a.path / rel for a in deps for name, rel in a.summary.get("artifacts", {}).items()}
