"""VLM-AD: annotate every sample with the VLM's reasoning answers, embed them; the `vlm_ad` method aligns the student to them.

Stage `annotate` (deterministic: one per study even with per-seed teachers): the annotator (the rules
annotator by default, an OpenAI-compatible server or a local transformers VLM otherwise) answers the
VLM-AD questions for every sample; the texts are embedded and written as extras (text embeddings,
action labels and their mask).

Control row option `shuffle_annotations`: the `vlm_ad` row trains on the annotation extras permuted
across samples (fixed `shuffle_seed`), so any gain that survives is not from what the annotations say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.config import check, to_dict
from drivedistill.models.text_encoder import TextEncoderConfig
from drivedistill.recipes.base import MethodUse, Recipe, Stage, StageContext
from drivedistill.registry import register

CODE_VERSION = 3  # bump when `annotate_stage` computes something else with an unchanged config
# 3: rules annotator v2 (annotate/rules.py RULES_VERSION): hard-braking leads, no world event read; since
#    rules v3 the stage key holds RULES_VERSION itself
# 2: the summary holds `annotation_quality` (annotate/quality.py) over every sample of the store


@dataclass
class VLMADRecipeConfig:
    """`recipes.vlm_ad`: how the annotations are made."""

    annotator: str = "rules"  # a registered annotator: rules | openai | transformers
    options: dict[str, Any] = field(default_factory=dict)  # the annotator's config (`--annotator.KEY`)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # embeds the answers
    shuffle_annotations: bool = False  # control rows: permute the extras across samples
    shuffle_seed: int = field(default=0, metadata=check(ge=0))  # the permutation's seed


def annotate_stage(cfg: VLMADRecipeConfig, ctx: StageContext) -> Any:
    """Annotate every sample (resumable: the cache keeps finished samples), embed, write the extras."""
    from drivedistill.annotate.cli import annotate_store, build_annotator, store_camera
    from drivedistill.data.store import SceneStore
    from drivedistill.methods.vlm_ad import store_extras
    from drivedistill.models.text_encoder import TextEncoder
    from drivedistill.recipes.extras import save_extras

    stage_cfg: dict[str, Any] = {
        "annotator": cfg.annotator,
        "options": cfg.options,
        "text_encoder": to_dict(cfg.text_encoder),
    }
    if cfg.annotator == "rules":  # new rules answer differently under the same config: re-annotate
        from drivedistill.annotate.rules import RULES_VERSION

        stage_cfg["rules_version"] = RULES_VERSION
    store = ctx.store

    def run(d: Path) -> dict[str, Any]:
        scenes = SceneStore(store.store_dir())
        annotator = build_annotator(
            cfg.annotator,
            [f"--annotator.{k}={v}" for k, v in cfg.options.items()],
            camera=store_camera(scenes.config),
        )
        summary = annotate_store(scenes, annotator, d / "annotations")
        encoder = TextEncoder(replace(cfg.text_encoder, cache_dir=str(d / "text_cache")))
        extras = store_extras(scenes, None, d / "annotations", encoder, summary.key)
        save_extras(d / "extras.npz", extras)
        return {
            "annotator_key": summary.key,
            "done": summary.done,
            "failed": summary.failed,
            "cached": summary.cached,
            "annotation_quality": _annotation_quality(scenes, d / "annotations", summary.key),
        }

    return ctx.run(stage_cfg, [store], run)


def _annotation_quality(scenes: Any, root: Path, key: str) -> dict[str, Any]:
    """`store_annotation_quality` over every sample (label accuracy against the world's event family,
    label distribution, predictability from the student's target), or {"skipped": why} for a store
    without the privileged truth it needs (a source other than the embedded world names no events)."""
    from drivedistill.annotate.quality import store_annotation_quality

    if "world" not in scenes.config:
        return {"skipped": "the store was not collected from the embedded world (no event families)"}
    return store_annotation_quality(scenes, str(root), key)


def shuffled(cfg: VLMADRecipeConfig, extras: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The control's extras: every annotation extra moved to another sample by one fixed permutation
    (the same for every extra, so a sample keeps a consistent — but someone else's — annotation)."""
    if not cfg.shuffle_annotations or not extras:
        return extras
    tokens = sorted(next(iter(extras.values())))
    perm = np.random.default_rng(cfg.shuffle_seed).permutation(len(tokens))
    return {
        name: {t: by_token[tokens[j]] for t, j in zip(tokens, perm)}
        if set(by_token) == set(tokens)
        else by_token
        for name, by_token in extras.items()
    }


MAX_FAILED_FRACTION = 0.05  # annotations that failed after all retries, of all samples


def quality(cfg: VLMADRecipeConfig, stages: Mapping[str, Any]) -> dict[str, Any]:
    """Gate: at most MAX_FAILED_FRACTION of the samples lack an annotation (failed requests), and the
    annotation-quality checks of annotate/quality.py hold (protocol "cause_vs_world_event": cause labels
    accurate against the world's event family, no dominant cause, not predictable from the student's
    target). Reads the stage summary (computed there over every sample); nothing is recomputed."""
    summary = stages["annotate"].summary
    done, failed = int(summary.get("done", 0)), int(summary.get("failed", 0))
    fraction = failed / max(done + failed, 1)
    metrics: dict[str, Any] = {
        "annotated": done,
        "failed": failed,
        "failed_fraction": fraction,
        "annotator": cfg.annotator,
    }
    checks = {"few_failed_annotations": done > 0 and fraction <= MAX_FAILED_FRACTION}
    aq = summary.get("annotation_quality")
    if aq is None:
        checks["annotation_quality_measured"] = False  # a summary of an older stage version
    elif "skipped" in aq:
        metrics["annotation_quality"] = aq
    else:
        checks.update({f"annotations_{k}": bool(v) for k, v in aq.get("checks", {}).items()})
        metrics["annotation_quality"] = {
            k: aq.get(k)
            for k in (
                "protocol",
                "label_accuracy",
                "accuracy_per_event",
                "support_per_event",
                "distribution",
                "max_cause_share",
                "trajectory_predictability",
                "thresholds",
            )
        }
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


@register("recipe", "vlm_ad", VLMADRecipeConfig)
def build(cfg: VLMADRecipeConfig) -> Recipe:
    del cfg
    return Recipe(
        name="vlm_ad",
        stages=(Stage("annotate", annotate_stage, seeded=False, code_version=CODE_VERSION, cost=0.5),),
        methods=(MethodUse("vlm_ad", needs=("annotate",), baseline="imitation", cost=1.4),),
        quality=quality,
        prepare_extras=shuffled,
        row_options=("shuffle_annotations", "shuffle_seed"),
    )
