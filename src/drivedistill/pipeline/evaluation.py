"""Evaluate one (model, seed) of the study: open loop (ST-P3 + UniAD), PDMS v1.1, closed loop, latency.

The planner sees `AgentInput` only: validation scenes are loaded without their privileged part for
planning; the privileged part is read separately, by the metrics alone. Two reference rows are the
exceptions, by design: the expert (`evaluate_expert`) and the reference rows recipes declare (a
teacher planning alone, e.g. from future frames) plan from privileged information; they are named
"…/privileged" in results.json.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivedistill.config import from_dict, to_dict
from drivedistill.pipeline.cache import Artifact
from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.types import AgentInput, AgentInputBatch, Scene
from drivedistill.utils.io import atomic_write_json, atomic_write_with


def load_deployable(
    model: ModelSpec, cfg: StudyConfig, trained: Artifact | None, deps: list[Artifact]
) -> torch.nn.Module:
    """What runs at inference for this row: the trained method's deployable module (the student alone,
    or student + frozen VLM for VLM-in-the-loop methods); an untrained student for method "none"."""
    from drivedistill import registry
    from drivedistill.config import deep_merge
    from drivedistill.methods.base import MethodContext
    from drivedistill.train.checkpoint import load_method

    if trained is None:
        entry = registry.get("student", model.student)
        scfg = deep_merge(cfg.students.get(model.student, {}), model.student_cfg)
        built = registry.build(
            "student",
            model.student,
            from_dict(entry.config_cls, scfg, "student") if entry.config_cls else None,
        )
        return built.eval()
    from drivedistill.pipeline.recipes import method_artifacts

    ctx = MethodContext(artifacts=method_artifacts(deps), device="cpu", seed=0)
    method = load_method(trained.path, context=ctx, device="cpu")
    return method.deployable().eval()


def _inputs(ais: list[AgentInput]) -> AgentInputBatch:
    from drivedistill.data.dataset import collate

    return collate([Scene(f"q{i}", "", i, ai, None) for i, ai in enumerate(ais)]).inputs


@torch.no_grad()
def latency_ms(module: torch.nn.Module, ai: AgentInput, repeats: int, threads: int = 2) -> dict[str, float]:
    """p50 / p90 wall time of one batch-1 plan (torch eager, `threads` intra-op threads), after warm-up."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = _inputs([ai])
        for _ in range(5):
            module(inputs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(prev)
    return {
        "p50": float(np.percentile(times, 50)),
        "p90": float(np.percentile(times, 90)),
        "threads": threads,
    }


def evaluate_model(
    cfg: StudyConfig,
    model: ModelSpec,
    seed: int,
    store_path: Path,
    trained: Artifact | None,
    deps: list[Artifact],
    out: Path,
    latency: bool = True,
) -> dict[str, Any]:
    """Every enabled metric of one (model, seed) through `train.evaluate.evaluate_student`, plus latency
    (unless `latency` is False: a job of a parallel run leaves it to `add_latency`, measured alone), parse
    failures (language students) and the perception probe (VLA students); writes metrics.json,
    predictions.npz and, for the first seed, closedloop.gif into `out`."""
    from drivedistill.data.store import SceneStore
    from drivedistill.train.evaluate import evaluate_student

    torch.manual_seed(seed)
    store = SceneStore(store_path)
    module = load_deployable(model, cfg, trained, deps)
    stats = getattr(module, "decode_stats", None)  # language students: parse failures of their text plans
    if isinstance(stats, dict):
        stats.update(decoded=0, parse_failures=0)
    ecfg = eval_config(cfg)
    gif = out / "closedloop.gif" if seed == cfg.seeds[0] else None
    res = evaluate_student(module, store, cfg.eval.split, ecfg, max_scenes=cfg.eval.max_scenes, gif=gif)
    tokens, plans = res["tokens"], res["plans"]

    def save_preds(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=np.array(tokens), plans=plans.astype(np.float32))

    atomic_write_with(out / "predictions.npz", save_preds)
    metrics: dict[str, Any] = {"seed": seed, "num_scenes": len(tokens)}
    metrics["params_m"] = sum(p.numel() for p in module.parameters()) / 1e6
    if isinstance(stats, dict):
        # never dropped from the denominator: failed plans were replaced by the documented fallback
        metrics["parse_failures"] = {"count": stats["parse_failures"], "decoded": stats["decoded"]}
        metrics["parse_failure_examples"] = [str(t) for t in list(getattr(module, "last_failures", []))[:3]]
    metrics.update(study_metrics(res))
    val = [store.load(t) for t in tokens]
    metrics["per_scene"] = per_scene_values(res, val, ecfg.occupancy_classes)
    metrics.update(per_event_block(val, plans, res))
    from drivedistill.pipeline.recipes import row_metrics

    metrics.update(row_metrics(cfg, model, module, store, list(tokens)))  # e.g. a perception probe
    if latency and cfg.eval.latency_repeats > 0:
        ai = store.load(tokens[0], with_privileged=False).agent_input
        metrics["latency_ms"] = latency_ms(module, ai, cfg.eval.latency_repeats)
    metrics["eval_config"] = to_dict(cfg.eval)
    atomic_write_json(out / "metrics.json", metrics)
    return {k: metrics[k] for k in ("num_scenes", "params_m")}


def add_latency(
    cfg: StudyConfig,
    model: ModelSpec,
    store_path: Path,
    trained: Artifact | None,
    deps: list[Artifact],
    out: Path,
) -> bool:
    """Measure the latency an eval stage in `out` left out (see `evaluate_model`) and add it to its
    metrics.json; False when there was nothing to add."""
    import json

    from drivedistill.data.store import SceneStore

    metrics = json.loads((out / "metrics.json").read_text())
    if "latency_ms" in metrics or cfg.eval.latency_repeats <= 0:
        return False
    store = SceneStore(store_path)
    ai = store.load(store.tokens(cfg.eval.split)[0], with_privileged=False).agent_input
    module = load_deployable(model, cfg, trained, deps)
    metrics["latency_ms"] = latency_ms(module, ai, cfg.eval.latency_repeats)
    atomic_write_json(out / "metrics.json", metrics)
    return True


def eval_config(cfg: StudyConfig) -> Any:
    """The study's eval section as `train.evaluate.EvalConfig` (planning on the CPU)."""
    from drivedistill.train.evaluate import EvalConfig

    return EvalConfig(
        device="cpu",
        openloop=cfg.eval.openloop,
        pdms=cfg.eval.pdms,
        closed_loop=cfg.eval.closedloop_episodes > 0,
        closed_loop_episodes=max(cfg.eval.closedloop_episodes, 1),
    )


def study_metrics(res: dict[str, Any]) -> dict[str, Any]:
    """`evaluate_plans` output → the blocks of one results.json row, each with its protocol."""
    from drivedistill.metrics.closedloop import SUMMARY_KEYS
    from drivedistill.world.ego import REAR_AXLE_BEHIND_CENTRE, pdms_ego_geometry

    metrics: dict[str, Any] = {"protocols": {}}
    if "openloop" in res:
        ol = res["openloop"]
        metrics["openloop"] = {"stp3": ol["stp3"], "uniad": ol["uniad"]}
        metrics["protocols"]["openloop"] = {"protocol": ol.get("protocol"), "options": ol.get("options")}
    if "pdms" in res:
        metrics["pdms"] = res["pdms"]["mean"]
        metrics["pdms_failures"] = res["pdms"]["failures"]
        metrics["protocols"]["pdms"] = res["pdms"]["protocol"]
        metrics["pdms_ego"] = {
            "rear_axle_behind_centre_m": REAR_AXLE_BEHIND_CENTRE,
            "geometry": pdms_ego_geometry(),
        }
    if "closed_loop" in res:
        cl = res["closed_loop"]
        metrics["closedloop"] = {k: cl[k] for k in SUMMARY_KEYS}
        metrics["closedloop_episodes"] = cl["episodes"]
        metrics["protocols"]["closedloop"] = cl["protocol"]
    return metrics


def per_event_block(scenes: list[Any], plans: np.ndarray, res: dict[str, Any]) -> dict[str, Any]:
    """{"per_event": L2/PDMS per event family (world/event_report.py)} — empty for stores without event
    labels (e.g. nuScenes)."""
    from drivedistill.world.event_report import event_metrics, family_of

    if not scenes or not any(family_of(s) for s in scenes):
        return {}
    return {"per_event": event_metrics(scenes, plans, res.get("pdms", {}).get("scenes"))}


def per_scene_values(res: dict[str, Any], scenes: list[Scene], occupancy_classes: str) -> dict[str, Any]:
    """metrics.json "per_scene": each headline metric (keys of `drivedistill.stats.METRICS`) per
    validation scene (keyed by scene token) or closed-loop episode (keyed "episode<i>-<scenario>"), for
    the paired comparisons of a single-seed run. The open-loop values are each scene's own ST-P3 / UniAD
    summaries of the per-step L2 [m] and box collision [%] (`metrics.openloop.step_metrics`, reference
    options): their mean over the scenes is the row's figure."""
    from drivedistill.metrics.occupancy import NUM_STEPS, occupancy_from_scene
    from drivedistill.metrics.openloop import OpenLoopOptions, horizon_summary, step_metrics

    out: dict[str, Any] = {}
    if "openloop" in res:
        opts = OpenLoopOptions(occupancy_classes=occupancy_classes)
        if res["openloop"].get("options", {}).get("l2", "reference") != opts.l2:
            raise ValueError("per-scene open-loop values assume the reference L2; the run used another")
        tokens = [s.token for s in scenes]
        values: dict[str, dict[str, float]] = {
            "openloop/stp3/l2_avg_m": {},
            "openloop/uniad/l2_avg_m": {},
            "openloop/stp3/collision_avg_pct": {},
        }
        plans = np.asarray(res["plans"])
        for start in range(0, len(scenes), 64):
            chunk = scenes[start : start + 64]
            privs = [s.privileged for s in chunk if s.privileged is not None]
            sm = step_metrics(
                plans[start : start + len(chunk)],
                np.stack([p.future_trajectory[:NUM_STEPS] for p in privs]),
                np.stack([p.future_valid[:NUM_STEPS] for p in privs]),
                np.stack([occupancy_from_scene(s, occupancy_classes) for s in chunk]),
                opts,
            )
            for i, token in enumerate(tokens[start : start + len(chunk)]):
                values["openloop/stp3/l2_avg_m"][token] = horizon_summary(sm.l2[i], "stp3")["avg"]
                values["openloop/uniad/l2_avg_m"][token] = horizon_summary(sm.l2[i], "uniad")["avg"]
                col = 100.0 * sm.obj_box_col[i].astype(np.float64)
                values["openloop/stp3/collision_avg_pct"][token] = horizon_summary(col, "stp3")["avg"]
        out.update(values)
    if "pdms" in res:
        out["pdms/navsim-v1.1"] = {t: float(v["pdms"]) for t, v in res["pdms"]["scenes"].items()}
    if "closed_loop" in res:
        out["closedloop/driving_score"] = {
            f"episode{e['index']}-{e['scenario']}": float(e["driving_score"])
            for e in res["closed_loop"]["episodes"]
        }
    return out


def evaluate_expert(cfg: StudyConfig, store_path: Path, out: Path) -> dict[str, Any]:
    """The reference row: the privileged expert's own 4 s plan scored like a model (open loop: 0 by
    construction; PDMS: NAVSIM's "human" row), and the expert driving the closed-loop episodes."""
    from drivedistill.data.store import SceneStore
    from drivedistill.metrics.closedloop import EXPERT
    from drivedistill.train.evaluate import evaluate_plans

    store = SceneStore(store_path)
    tokens = store.tokens(cfg.eval.split)[: cfg.eval.max_scenes or None]
    scenes = [store.load(t) for t in tokens]
    plans = np.stack([s.privileged.future_trajectory for s in scenes if s.privileged is not None])
    metrics: dict[str, Any] = {"seed": 0, "num_scenes": len(tokens), "params_m": 0.0}
    res = evaluate_plans(plans.astype(np.float64), scenes, store, eval_config(cfg), EXPERT)
    metrics.update(study_metrics(res))
    metrics.update(per_event_block(scenes, plans, res))
    if "per_event" in metrics:
        from drivedistill.world.event_report import expert_departure

        metrics["per_event"]["expert_departs_cv"] = expert_departure(scenes)
    atomic_write_json(out / "metrics.json", metrics)
    return {"num_scenes": len(tokens)}


def evaluate_reference(
    cfg: StudyConfig,
    store_path: Path,
    plan: Callable[[list[Scene]], tuple[np.ndarray, dict[str, Any]]],
    out: Path,
) -> dict[str, Any]:
    """A reference row a recipe declares (a teacher planning alone): `plan(validation scenes)` →
    ((N, 8, 3) plans, extra metric blocks), scored open loop and by PDMS like any row. No closed loop
    and no latency: such teachers read what does not exist while driving (e.g. future frames)."""
    from drivedistill.data.store import SceneStore
    from drivedistill.train.evaluate import evaluate_plans

    store = SceneStore(store_path)
    tokens = store.tokens(cfg.eval.split)[: cfg.eval.max_scenes or None]
    scenes = [store.load(t) for t in tokens]
    plans, extra = plan(scenes)
    ecfg = dataclasses.replace(eval_config(cfg), closed_loop=False)
    metrics: dict[str, Any] = {"seed": 0, "num_scenes": len(tokens), **extra}
    metrics.update(study_metrics(evaluate_plans(np.asarray(plans, np.float64), scenes, store, ecfg, None)))
    atomic_write_json(out / "metrics.json", metrics)
    return {"num_scenes": len(tokens)}
