"""The study, top to bottom: collect → annotate → latent actions → teachers → students → eval → report.

Every step is a cached stage (pipeline/cache.py): its directory is keyed by its config and the keys of
the stages it reads, so a second run skips what is done and a changed knob re-runs only what depends
on it. Recipe stages run only when a model in `cfg.models` needs them (run one recipe alone by listing
only its models).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.config import deep_merge, from_dict, to_dict
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.pipeline.extras import Extras, read_extras
from drivedistill.pipeline.recipes import RECIPE_STAGES, extras_for, method_artifacts, student_paths
from drivedistill.utils.io import atomic_write_json


def collect_stage(runner: StageRunner, cfg: StudyConfig) -> Artifact:
    if cfg.source.get("name", "world") != "world":  # a registered data source (data/collect.py)
        from drivedistill.data.collect import source_stage

        return source_stage(runner, cfg)
    from drivedistill.world.collect import collect
    from drivedistill.world.config import WorldConfig

    world = from_dict(WorldConfig, cfg.world, "world")
    stage_cfg = {
        "world": to_dict(world),
        "val_fraction": cfg.val_fraction,
        "episodes_per_shard": cfg.episodes_per_shard,
    }

    def run(d: Path) -> dict[str, Any]:
        manifest = collect(
            world,
            d / "store",
            workers=cfg.workers,
            episodes_per_shard=cfg.episodes_per_shard,
            val_fraction=cfg.val_fraction,
        )
        return {
            "store": "store",  # relative to the stage directory (Artifact.store_dir)
            "stats": manifest.get("stats", {}),
            "seconds": manifest.get("collect_seconds"),
        }

    return runner.run("collect", stage_cfg, [], run)


def resolved_spec(cfg: StudyConfig, model: ModelSpec, seed: int, deps: list[Artifact]) -> Any:
    """The RunSpec of one (model, seed): study defaults ← per-student/method sections ← the model's own
    ← paths to recipe artifacts the student starts from."""
    from drivedistill.train.config import resolve_run

    train = deep_merge(deep_merge(cfg.train, model.train), {"seed": seed, "device": cfg.device})
    return resolve_run(
        model.student,
        model.method,
        {
            "student": deep_merge(
                deep_merge(cfg.students.get(model.student, {}), model.student_cfg),
                student_paths(deps, model.student),
            ),
            "method": deep_merge(cfg.methods.get(model.method, {}), model.method_cfg),
            "train": train,
        },
    )


# Bumped when a method's training changes without a config change, so cached stages of it re-run:
# method → [(revision, method-config switches it applies to)], the last matching entry wins.
# evodrive 2: MC-dropout candidates took their logits from hidden states one token late;
# evodrive 3: the anchor loss collapsed to 0 once the AnchorFormer weights underflowed (visual KD only).
METHOD_REVISIONS: dict[str, list[tuple[int, dict[str, Any]]]] = {
    "evodrive": [(2, {}), (3, {"visual_kd": True})],
}


def method_revision(method: str, method_cfg: dict[str, Any]) -> int | None:
    """The revision of `method` with this resolved config (None: never revised)."""
    matching = [
        rev
        for rev, switches in METHOD_REVISIONS.get(method, [])
        if all(method_cfg.get(k) == v for k, v in switches.items())
    ]
    return matching[-1] if matching else None


def train_stage(
    runner: StageRunner,
    cfg: StudyConfig,
    model: ModelSpec,
    seed: int,
    store: Artifact,
    deps: list[Artifact],
    extras: Callable[[], Extras],
) -> Artifact:
    """Train one (model, seed); `extras` is called only if the stage runs (not when cached or dry)."""
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.methods.base import MethodContext
    from drivedistill.train.checkpoint import without_legacy_fields
    from drivedistill.train.run import train_student

    spec = resolved_spec(cfg, model, seed, deps)
    sections = spec.config()
    stage_cfg: dict[str, Any] = {
        "model": model.name,
        "spec": {
            **sections,
            "student": without_legacy_fields(sections["student"]),
            "train": to_dict(spec.train),
            "names": spec.meta(),
        },
    }

    revision = method_revision(model.method, sections["method"])
    if revision is not None:
        stage_cfg["revision"] = revision

    def run(d: Path) -> dict[str, Any]:
        ds = SceneDataset(SceneStore(store.store_dir()), "train", extras=extras(), cache_decoded=True)
        resume = (d / "checkpoints").exists() and any((d / "checkpoints").iterdir())
        from drivedistill.utils.runtime import select_device

        ctx = MethodContext(artifacts=method_artifacts(deps), device=select_device(cfg.device), seed=seed)
        result = train_student(spec, ds, d, context=ctx, resume=resume)
        return {
            "checkpoint": str(d),
            "step": result.step,
            "losses": result.losses,
            "samples_per_s": result.samples_per_s,
        }

    return runner.run(f"train-{model.name.replace('/', '_')}-s{seed}", stage_cfg, [store, *deps], run)


# eval fields that choose report panels or reference rows, not how a (model, seed) is measured
NOT_IN_EVAL_KEY = ("scene_panels", "oracle_reference")


def eval_key(cfg: StudyConfig) -> dict[str, Any]:
    """The eval section as it keys eval stages (without NOT_IN_EVAL_KEY)."""
    return {k: v for k, v in to_dict(cfg.eval).items() if k not in NOT_IN_EVAL_KEY}


def eval_stage(
    runner: StageRunner,
    cfg: StudyConfig,
    model: ModelSpec,
    seed: int,
    store: Artifact,
    trained: Artifact | None,
    deps: list[Artifact],
    latency: bool = True,
) -> Artifact:
    """Evaluate one (model, seed); `latency=False` leaves the latency to `add_latency` (parallel jobs)."""
    from drivedistill.pipeline.evaluation import evaluate_model
    from drivedistill.train.checkpoint import without_legacy_fields

    inputs = [store, *deps] + ([trained] if trained is not None else [])

    def run(d: Path) -> dict[str, Any]:
        return evaluate_model(cfg, model, seed, store.store_dir(), trained, deps, d, latency=latency)

    key = {
        "eval": eval_key(cfg),
        "model": {**to_dict(model), "student_cfg": without_legacy_fields(model.student_cfg)},
        "student_defaults": without_legacy_fields(cfg.students.get(model.student, {})),  # untrained rows
        "probe": {k: cfg.evodrive.get(k) for k in ("perception", "probe_after")},
        "per_scene": 1,  # metrics.json holds per-scene values and probe baselines (stats.py reads them)
    }
    return runner.run(f"eval-{model.name.replace('/', '_')}-s{seed}", key, inputs, run)


def _mean_std(values: list[Any]) -> tuple[Any, Any]:
    """Mean and std over seeds of nested dicts of numbers (keys present in every seed)."""
    first = values[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        pairs = {k: _mean_std([v[k] for v in values]) for k in keys}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    if (
        isinstance(first, int | float)
        and not isinstance(first, bool)
        and all(isinstance(v, int | float) for v in values)
    ):
        arr = np.asarray(values, dtype=np.float64)
        return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return first, None


EXPERT_ROW = "expert/privileged"  # the reference row: the expert that produced the targets
ORACLE_ROW = "oracle/privileged"  # EvoDriveVLA's future-aware teacher alone (reads future frames)
METRIC_BLOCKS = (
    "openloop",
    "pdms",
    "closedloop",
    "latency_ms",
    "params_m",
    "parse_failures",
    "perception_probe",
    "per_event",  # L2/PDMS per event family (world/event_report.py)
)


def aggregate(cfg: StudyConfig, per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """results.json: per model, means over seeds with a sibling "std" block of the same shape."""
    from drivedistill.train.checkpoint import versions

    models: dict[str, Any] = {}
    specs = list(cfg.models)
    if ORACLE_ROW in per_seed:  # the privileged reference rows first
        specs.insert(0, ModelSpec(name=ORACLE_ROW, student="oracle", method="privileged"))
    if EXPERT_ROW in per_seed:
        specs.insert(0, ModelSpec(name=EXPERT_ROW, student="expert", method="privileged"))
    for spec in specs:
        runs = per_seed.get(spec.name, [])
        if not runs:
            continue
        entry: dict[str, Any] = {
            "student": spec.student,
            "method": spec.method,
            "seeds": [r["seed"] for r in runs],
        }
        std: dict[str, Any] = {}
        for block in METRIC_BLOCKS:
            vals = [r[block] for r in runs if block in r]
            if len(vals) == len(runs):
                entry[block], s = _mean_std(vals)
                if s is not None:
                    std[block] = s
        entry["protocols"] = runs[0].get("protocols", {})
        entry["std"] = std
        models[spec.name] = entry
    return {
        "schema": 2,  # 2: "comparisons" (stats.py) and "hardware"
        "preset": cfg.preset,
        "seeds": list(cfg.seeds),
        "versions": versions(),
        "config_hash": StageRunner.key_of(to_dict(cfg)),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "models": models,
        "config": to_dict(cfg),
    }


def _metrics(stage: Artifact) -> dict[str, Any]:
    return dict(json.loads((stage.path / "metrics.json").read_text()))


def run_study(
    cfg: StudyConfig,
    out: Path,
    dry_run: bool = False,
    part: bool = False,
    recipes_only: bool = False,
    timings: dict[str, float] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole study into `out`; returns results.json's content.

    With `dry_run`, run nothing and return the plan: {"planned": {stage: seconds it took last time or
    None}, "cached": [finished stages]} (see StageRunner). With `part` (a job of a parallel run, see
    pipeline/jobs.py), run only the stages of `cfg.models` — no reference rows, latency left out,
    no results.json or report — and return {"stage_seconds": ...}; `recipes_only` (such a part) runs
    only the recipe stages that `cfg.models` need. `timings` / `started`: seconds of the
    stages this invocation's jobs ran and its `time.perf_counter()` start, reported with its own."""
    from drivedistill.pipeline.assets import build_assets
    from drivedistill.pipeline.evaluation import add_latency
    from drivedistill.report import write_report

    runner = StageRunner(out, log=(lambda _: None) if dry_run else print, dry_run=dry_run)
    t0 = time.perf_counter() if started is None else started
    store = collect_stage(runner, cfg)
    if dry_run and not store.cached:  # the recipe stages read the store to build their keys
        return {"planned": {"collect": None}, "cached": [], "everything": True}
    recipe_artifacts: dict[str, Artifact] = {}
    for stage_name, needed_by, fn in RECIPE_STAGES:
        if cfg.methods_used() & needed_by:
            recipe_artifacts[stage_name] = fn(runner, cfg, store, recipe_artifacts)
    if recipes_only:
        return {"stage_seconds": runner.timings}
    trained_runs: dict[tuple[str, int], Artifact] = {}
    evaluated: dict[tuple[str, int], Artifact] = {}
    for model in cfg.models:
        deps = [recipe_artifacts[n] for n in extras_for(model.method) if n in recipe_artifacts]
        # read once per model, and only if one of its train stages runs
        extras = functools.cache(functools.partial(read_extras, [a.path / "extras.npz" for a in deps]))
        for seed in cfg.seeds:
            trained = (
                None if model.method == "none" else train_stage(runner, cfg, model, seed, store, deps, extras)
            )
            if trained is not None:
                trained_runs[(model.name, seed)] = trained
            ev = eval_stage(runner, cfg, model, seed, store, trained, deps, latency=not part)
            evaluated[(model.name, seed)] = ev
            if not (dry_run or part) and add_latency(cfg, model, store.store_dir(), trained, deps, ev.path):
                print(f"latency of {model.name} seed {seed} measured alone (its job ran beside another)")
    if part:
        return {"stage_seconds": runner.timings}
    references: dict[str, Artifact] = {}  # row name → its eval stage
    if cfg.eval.expert_reference:
        from drivedistill.pipeline.evaluation import evaluate_expert

        ref = runner.run(
            "eval-expert",
            {"eval": eval_key(cfg)},
            [store],
            lambda d: evaluate_expert(cfg, store.store_dir(), d),
        )
        references[EXPERT_ROW] = ref
    if cfg.eval.oracle_reference and "evodrive_oracle" in recipe_artifacts:
        from drivedistill.pipeline.evaluation import evaluate_oracle

        oracle = recipe_artifacts["evodrive_oracle"]
        ref = runner.run(
            "eval-oracle",
            {"eval": eval_key(cfg), "oracle": cfg.evodrive.get("oracle", {})},
            [store, oracle],
            lambda d: evaluate_oracle(cfg, store.store_dir(), oracle, d),
        )
        references[ORACLE_ROW] = ref
    if dry_run:
        return {"planned": runner.planned, "cached": sorted(runner.recorded), "everything": False}
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for (name, _), ev in evaluated.items():  # models in order, seeds in order
        per_seed.setdefault(name, []).append(_metrics(ev))
    per_seed |= {name: [_metrics(ref)] for name, ref in references.items()}
    results = aggregate(cfg, per_seed)
    from drivedistill.stats import compare_rows
    from drivedistill.utils.runtime import hardware

    rows = {m.name: (m.student, m.method) for m in cfg.models}
    results["comparisons"] = compare_rows(per_seed, rows)  # baselines by the fallback rule (stats.py)
    results.setdefault("hardware", hardware(cfg.device))
    results["stage_seconds"] = {**(timings or {}), **runner.timings, "total": time.perf_counter() - t0}
    results["compute_seconds"] = {**runner.recorded, "total": sum(runner.recorded.values())}
    atomic_write_json(out / "results.json", results)
    assets = build_assets(cfg, out, store.store_dir(), trained_runs, evaluated, recipe_artifacts)
    write_report(out, results, assets)
    return results
