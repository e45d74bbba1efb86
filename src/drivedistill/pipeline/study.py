"""The study, top to bottom: collect → recipe stages (annotations, teachers) → students → eval → report.

Every step is a cached stage (pipeline/cache.py): its directory is keyed by its config and the keys of
the stages it reads, so a second run skips what is done and a changed knob re-runs only what depends
on it. Recipe stages (declared by the registered recipes, drivedistill/recipes/) run only when a model
in `cfg.models` needs them (run one recipe alone by listing only its models); with `teachers:
per_seed` once per seed.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.config import deep_merge, from_dict, to_dict
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.pipeline.recipes import (
    RecipeStages,
    all_recipes,
    baseline_row,
    code_version,
    method_artifacts,
    recipe_of,
    row_recipe_config,
    student_paths,
)
from drivedistill.recipes.extras import Extras, read_extras
from drivedistill.utils.io import atomic_write_json


def collect_stage(runner: StageRunner, cfg: StudyConfig) -> Artifact:
    if cfg.source.get("name", "world") != "world":  # a registered data source (data/collect.py)
        from drivedistill.data.collect import source_stage

        return source_stage(runner, cfg)
    from drivedistill.world.collect import collect
    from drivedistill.world.config import WORLD_CODE_VERSION, WorldConfig

    world = from_dict(WorldConfig, cfg.world, "world")
    stage_cfg = {
        "world": world.data_key(),
        "world_code_version": WORLD_CODE_VERSION,
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
    from drivedistill.train.loop import train_section  # later-added fields at default: same stage key
    from drivedistill.train.run import train_student

    spec = resolved_spec(cfg, model, seed, deps)
    sections = spec.config()
    stage_cfg: dict[str, Any] = {
        "model": model.name,
        "spec": {
            **sections,
            "student": without_legacy_fields(sections["student"]),
            "train": train_section(spec.train),
            "names": spec.meta(),
        },
    }

    version = code_version(model.method)
    if version is not None:  # the method's code version, declared by its recipe (recipes/<name>.py)
        stage_cfg["code_version"] = version
    if model.recipe_cfg:  # a control's row options (e.g. shuffled extras)
        stage_cfg["recipe_cfg"] = model.recipe_cfg
    if model.max_samples:
        stage_cfg["max_samples"] = model.max_samples

    def run(d: Path) -> dict[str, Any]:
        ds = SceneDataset(SceneStore(store.store_dir()), "train", extras=extras(), cache_decoded=True)
        data: Any = labelled_subset(ds, model.max_samples)
        resume = (d / "checkpoints").exists() and any((d / "checkpoints").iterdir())
        from drivedistill.utils.runtime import select_device

        ctx = MethodContext(artifacts=method_artifacts(deps), device=select_device(cfg.device), seed=seed)
        result = train_student(spec, data, d, context=ctx, collate=ds.collate, resume=resume)
        return {
            "checkpoint": str(d),
            "train_samples": len(data),
            "step": result.step,
            "losses": result.losses,
            "samples_per_s": result.samples_per_s,
        }

    return runner.run(f"train-{model.name.replace('/', '_')}-s{seed}", stage_cfg, [store, *deps], run)


def labelled_subset(ds: Any, max_samples: int) -> Any:
    """The first `max_samples` samples of a fixed permutation (seed 0) of the training split — the
    same subset for every seed and row, nested across sizes (a learning curve's points); all when 0."""
    if max_samples <= 0 or max_samples >= len(ds):
        return ds
    from torch.utils.data import Subset

    order = np.random.default_rng(0).permutation(len(ds))
    return Subset(ds, sorted(order[:max_samples].tolist()))


# eval fields that choose report panels or reference rows, not how a (model, seed) is measured
NOT_IN_EVAL_KEY = ("scene_panels", "recipe_references")


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
        "per_scene": 1,  # metrics.json holds per-scene values and probe baselines (stats.py reads them)
    }
    found = recipe_of(model.method)
    if found is not None and found[0].row_metrics is not None:  # e.g. a perception probe of VLA rows
        key["recipe"] = found[0].row_metrics_key(row_recipe_config(cfg, model))
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
METRIC_BLOCKS = (
    "openloop",
    "pdms",
    "closedloop",
    "latency_ms",
    "params_m",
    "parse_failures",
    "perception_probe",
    "per_event",  # L2/PDMS per event family (world/event_report.py)
    "ce_teacher_forced",  # VLA rows and the oracle: per-token CE of the GT answer (EvoDrive's gate)
)


def seed_rows(models: dict[str, Any], per_seed: dict[str, list[dict[str, Any]]], seed: int) -> dict[str, Any]:
    """The rows of `models` as seed `seed` measured them (each row's metrics of that seed over its
    description); rows without that seed are left out."""
    out: dict[str, Any] = {}
    for name, runs in per_seed.items():
        run = next((r for r in runs if r.get("seed") == seed), None)
        if run is not None and name in models:
            out[name] = {**models[name], **run}
    return out


def students_gates(
    cfg: StudyConfig,
    quality: dict[str, dict[str, Any]],
    models: dict[str, Any],
    per_seed: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each teacher gate completed with its recipe's `student_gate` (the teacher against this run's
    students): `vs_students` holds its checks, and `pass` requires both parts. A teacher of one seed
    (`teachers: per_seed`, label `NAME-sK`) is checked against seed K's rows, its own reference row
    and students, given `per_seed`; a teacher per run against the means over seeds (`vs_students.seed`
    says which)."""
    from drivedistill.recipes.base import all_recipes

    out: dict[str, dict[str, Any]] = {}
    for label, gate in quality.items():
        name = label.split("~")[0].split("-s")[0]
        recipe = all_recipes().get(name)
        gate = dict(gate)
        if recipe is not None and recipe.student_gate is not None:
            match = re.fullmatch(r".*-s(\d+)", label)
            seed, rows = None, models
            if match is not None and per_seed is not None:
                seed = int(match.group(1))
                rows = seed_rows(models, per_seed, seed)
            vs = dict(recipe.student_gate(cfg.recipe(name, {}), rows))
            vs["seed"] = "mean over seeds" if seed is None else seed
            gate["vs_students"] = vs
            gate["pass"] = bool(gate.get("pass")) and bool(vs.get("pass"))
        out[label] = gate
    return out


def controls_by_row(cfg: StudyConfig) -> dict[str, list[str]]:
    """row → the control rows that declare they control for it (`ModelSpec.controls`), in model order."""
    out: dict[str, list[str]] = {}
    for m in cfg.models:
        if m.controls:
            out.setdefault(m.controls, []).append(m.name)
    return out


def aggregate(cfg: StudyConfig, per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """results.json: per model, means over seeds with a sibling "std" block of the same shape."""
    from drivedistill.train.checkpoint import versions
    from drivedistill.utils.runtime import hardware

    models: dict[str, Any] = {}
    model_rows = set(cfg.model_names())
    references = [n for n in per_seed if n not in model_rows and n != EXPERT_ROW]
    specs = [ModelSpec(name=n, student=n.split("/")[0], method="privileged") for n in references]
    if EXPERT_ROW in per_seed:  # the privileged reference rows first, the expert's on top
        specs.insert(0, ModelSpec(name=EXPERT_ROW, student="expert", method="privileged"))
    specs += list(cfg.models)
    for spec in specs:
        runs = per_seed.get(spec.name, [])
        if not runs:
            continue
        base = baseline_row(spec, list(cfg.models)) if spec.method != "privileged" else None
        entry: dict[str, Any] = {
            "student": spec.student,
            "method": spec.method,
            "seeds": [r["seed"] for r in runs],
            "baseline": base,  # the row it is compared against (same student, labelled-set size)
            "controls": spec.controls or None,  # a control row: the row it controls for
            "max_samples": spec.max_samples or None,  # labelled training samples (None: all)
            "teachers": cfg.teachers if recipe_of(spec.method) is not None else None,
        }
        std: dict[str, Any] = {}
        for block in METRIC_BLOCKS:
            vals = [r[block] for r in runs if block in r]
            if len(vals) == len(runs):
                entry[block], s = _mean_std(vals)
                if s is not None:
                    std[block] = s
        if any("closedloop_episodes" in r for r in runs):  # where it leaves the road, summed over seeds
            from drivedistill.metrics.closedloop import episodes_by_scenario

            entry["closedloop_by_scenario"] = episodes_by_scenario(
                e for r in runs for e in r.get("closedloop_episodes", [])
            )
        entry["protocols"] = runs[0].get("protocols", {})
        entry["std"] = std
        models[spec.name] = entry
    return {
        "schema": 2,  # 2: "comparisons" (stats.py) and "hardware"
        "preset": cfg.preset,
        "seeds": list(cfg.seeds),
        "teachers": cfg.teachers,  # per_seed: seed k of a row used teacher k; once: one teacher per run
        "hardware": hardware(cfg.device),  # of this process; every stage's own: stage_hardware
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
    None}, "cached": [finished stages], "needs": {row: [recipe stages it reads]}, "rows": [...]} (see
    StageRunner). With `part` (a job of a parallel run, see pipeline/jobs.py), run only the stages of
    `cfg.models` — no reference rows, latency left out, no results.json or report — and return
    {"stage_seconds": ...}; `recipes_only` (such a part) runs only the recipe stages that `cfg.models`
    need. `timings` / `started`: seconds of the stages this invocation's jobs ran and its
    `time.perf_counter()` start, reported with its own."""
    from drivedistill.pipeline.assets import build_assets
    from drivedistill.pipeline.evaluation import add_latency
    from drivedistill.report import write_report

    runner = StageRunner(out, log=(lambda _: None) if dry_run else print, dry_run=dry_run, device=cfg.device)
    t0 = time.perf_counter() if started is None else started
    store = collect_stage(runner, cfg)
    if dry_run and not store.cached:  # the recipe stages read the store to build their keys
        return {
            "planned": {"collect": None},
            "cached": [],
            "everything": True,
            "needs": {},
            "rows": rows(cfg),
        }
    recipes = RecipeStages(runner, cfg, store)
    needs: dict[str, list[str]] = {}
    for model in cfg.models:  # recipe stages first: every row's teachers, each distinct key once
        labels = [label for seed in cfg.seeds for label, _ in recipes.for_model(model, seed)]
        needs[model.name] = list(dict.fromkeys(labels))
    if recipes_only:
        return {"stage_seconds": runner.timings}
    quality = {} if dry_run or part else recipes.quality()  # the teachers' gates, before students train
    for label, gate in quality.items():
        print(f"teacher quality {label}: {'pass' if gate.get('pass') else 'FAIL'} {gate.get('checks', {})}")
    trained_runs: dict[tuple[str, int], Artifact] = {}
    evaluated: dict[tuple[str, int], Artifact] = {}
    for model in cfg.models:
        found = recipe_of(model.method)
        prepare = found[0].prepare_extras if found is not None else None
        row_cfg = row_recipe_config(cfg, model)
        for seed in cfg.seeds:
            deps = [a for _, a in recipes.for_model(model, seed)]
            paths = [a.path / "extras.npz" for a in deps]
            # read only if one of its train stages runs; once per (row, teacher)
            extras = functools.cache(functools.partial(_row_extras, paths, prepare, row_cfg))
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
    # row name → (teacher seed or None for a teacher per run, its eval stage), one per teacher
    references: dict[str, list[tuple[int | None, Artifact]]] = {}
    if cfg.eval.expert_reference:
        from drivedistill.pipeline.evaluation import evaluate_expert

        ref = runner.run(
            "eval-expert",
            {"eval": eval_key(cfg)},
            [store],
            lambda d: evaluate_expert(cfg, store.store_dir(), d),
        )
        references[EXPERT_ROW] = [(None, ref)]
    if cfg.eval.recipe_references:
        from drivedistill.pipeline.evaluation import evaluate_reference

        for (name, variant, tseed), done in recipes.results.items():
            recipe = all_recipes()[name]
            for reference in recipe.references if not variant else ():
                if reference.stage not in done:
                    continue
                art, rcfg = done[reference.stage][1], cfg.recipe(name)
                who = reference.row.split("/")[0]
                plan = functools.partial(reference.plan, rcfg, art)
                ev = runner.run(
                    f"eval-{who}" + (f"-s{tseed}" if tseed is not None else ""),
                    {"eval": eval_key(cfg), who: reference.key(rcfg)},
                    [store, art],
                    functools.partial(evaluate_reference, cfg, store.store_dir(), plan),
                )
                references.setdefault(reference.row, []).append((tseed, ev))
    if dry_run:
        return {
            "planned": runner.planned,
            "cached": sorted(runner.recorded),
            "everything": False,
            "needs": needs,
            "rows": rows(cfg, references),
        }
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for (name, _), ev in evaluated.items():  # models in order, seeds in order
        per_seed.setdefault(name, []).append(_metrics(ev))
    for name, evs in references.items():  # a teacher's seed where it has one, else its position
        per_seed[name] = [
            {**_metrics(ev), "seed": i if tseed is None else tseed} for i, (tseed, ev) in enumerate(evs)
        ]
    results = aggregate(cfg, per_seed)
    from drivedistill.stats import compare_rows

    compared = {m.name: (m.student, m.method) for m in cfg.models if m.name in per_seed}
    models = results["models"]
    results["comparisons"] = compare_rows(
        per_seed,
        compared,
        baselines={n: models[n]["baseline"] for n in compared if models.get(n, {}).get("baseline")},
        controls=controls_by_row(cfg),
    )
    results["teacher_quality"] = students_gates(cfg, quality, results["models"], per_seed)
    results["stage_seconds"] = {**(timings or {}), **runner.timings, "total": time.perf_counter() - t0}
    results["compute_seconds"] = {**runner.recorded, "total": sum(runner.recorded.values())}
    results["stage_hardware"] = dict(runner.hardware)
    atomic_write_json(out / "results.json", results)
    recipe_artifacts = {label: art for label, art in recipes.by_path.values()}
    assets = build_assets(cfg, out, store.store_dir(), trained_runs, evaluated, recipe_artifacts)
    write_report(out, results, assets)
    return results


def _row_extras(paths: list[Path], prepare: Any, row_cfg: Any) -> Extras:
    """A row's extras: the recipe stages' files, passed through its recipe's `prepare_extras`."""
    extras = read_extras(paths)
    return prepare(row_cfg, extras) if prepare is not None else extras


def rows(cfg: StudyConfig, references: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of the study with what pairs them: baseline row, controlled row, labelled samples."""
    out: list[dict[str, Any]] = [{"row": name, "kind": "reference"} for name in (references or {})]
    for m in cfg.models:
        out.append(
            {
                "row": m.name,
                "kind": "control" if m.controls else "model",
                "baseline": baseline_row(m, list(cfg.models)),
                "controls": m.controls or None,
                "max_samples": m.max_samples or None,
            }
        )
    return out
