"""Evaluate one (model, seed) of the study: open loop (ST-P3 + UniAD), PDMS v1.1, closed loop, latency.

The planner sees `AgentInput` only: validation scenes are loaded without their privileged part for
planning; the privileged part is read separately, by the metrics alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivedistill.config import from_dict, to_dict
from drivedistill.pipeline.cache import Artifact
from drivedistill.pipeline.config import ModelSpec, StudyConfig
from drivedistill.types import AgentInput, AgentInputBatch, Scene
from drivedistill.utils.io import atomic_write_json, atomic_write_with

# The default world's ego is highway-env's 5 m × 2 m box. Its rear axle is placed 1.25 m behind the box
# centre (the Pacifica's 1.461 m scaled to a 5 m car, rounded); wheelbase 2.9 m (PDMS tracker).
WORLD_REAR_AXLE = 1.25  # [m]
WORLD_WHEELBASE = 2.9  # [m]


def world_ego_geometry() -> tuple[float, float, float, float]:
    """(width, front length, rear length from the rear axle, wheelbase) of the default world's ego [m]."""
    from drivedistill.world.episode import EGO_LENGTH, EGO_WIDTH

    return (EGO_WIDTH, EGO_LENGTH / 2 + WORLD_REAR_AXLE, EGO_LENGTH / 2 - WORLD_REAR_AXLE, WORLD_WHEELBASE)


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
def predict(module: torch.nn.Module, scenes: list[Scene], batch_size: int = 16) -> np.ndarray:
    """(N, 8, 3) plans for `scenes` (their agent input only)."""
    out = []
    for i in range(0, len(scenes), batch_size):
        chunk = [s.agent_input for s in scenes[i : i + batch_size]]
        out.append(module(_inputs(chunk)).trajectory.float().cpu().numpy())
    return np.concatenate(out, 0).astype(np.float64)


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
) -> dict[str, Any]:
    """Run every enabled metric; write metrics.json (+ predictions.npz, closedloop.gif) into `out`."""
    from drivedistill.data.store import SceneStore
    from drivedistill.metrics.metric_scene import centre_plan_to_rear_axle, metric_scene_from_scene
    from drivedistill.metrics.openloop import evaluate_openloop_scenes
    from drivedistill.metrics.pdms import score_plans
    from drivedistill.world.config import WorldConfig
    from drivedistill.world.episode import EGO_LENGTH, EGO_WIDTH

    torch.manual_seed(seed)
    store = SceneStore(store_path)
    tokens = store.tokens(cfg.eval.split)
    if cfg.eval.max_scenes > 0:
        tokens = tokens[: cfg.eval.max_scenes]
    module = load_deployable(model, cfg, trained, deps)
    planning_inputs = [store.load(t, with_privileged=False) for t in tokens]
    stats = getattr(module, "decode_stats", None)  # language students: parse failures of their text plans
    if isinstance(stats, dict):
        stats.update(decoded=0, parse_failures=0)
    plans = predict(module, planning_inputs)
    del planning_inputs
    scenes = [store.load(t) for t in tokens]  # privileged: for the metrics only

    def save_preds(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=np.array(tokens), plans=plans.astype(np.float32))

    atomic_write_with(out / "predictions.npz", save_preds)
    metrics: dict[str, Any] = {"seed": seed, "num_scenes": len(tokens), "protocols": {}}
    metrics["params_m"] = sum(p.numel() for p in module.parameters()) / 1e6
    if isinstance(stats, dict):
        # never dropped from the denominator: failed plans were replaced by the documented fallback
        metrics["parse_failures"] = {"count": stats["parse_failures"], "decoded": stats["decoded"]}
        metrics["parse_failure_examples"] = [str(t) for t in list(getattr(module, "last_failures", []))[:3]]
    core = getattr(module, "core", None)
    if core is not None and cfg.evodrive.get("probe_after", True):
        from drivedistill.models.perception import linear_probe
        from drivedistill.pipeline.recipe_evodrive import perception_config

        train_scenes = list(store.scenes("train"))
        metrics["perception_probe"] = linear_probe(
            core, train_scenes, [store.load(t) for t in tokens], perception_config(cfg)
        )
        del train_scenes
    if cfg.eval.openloop:
        ol = evaluate_openloop_scenes(plans, scenes)
        metrics["openloop"] = {"stp3": ol["stp3"], "uniad": ol["uniad"]}
        metrics["protocols"]["openloop"] = {"protocol": ol.get("protocol"), "options": ol.get("options")}
    if cfg.eval.pdms:
        # our poses are of the ego box centre; scene and plans move to the rear axle once, here
        metric_scenes = [metric_scene_from_scene(s, WORLD_REAR_AXLE, world_ego_geometry()) for s in scenes]
        rear_plans = np.stack([centre_plan_to_rear_axle(p, WORLD_REAR_AXLE) for p in plans])
        report = score_plans(metric_scenes, rear_plans).to_json()
        metrics["pdms"] = report["mean"]
        metrics["pdms_failures"] = report["failures"]
        metrics["protocols"]["pdms"] = report["protocol"]
    if cfg.eval.closedloop_episodes > 0:
        from drivedistill.metrics.closedloop import ClosedLoopConfig, evaluate_closed_loop

        world = from_dict(WorldConfig, cfg.world, "world")
        cl_cfg = ClosedLoopConfig(episodes=cfg.eval.closedloop_episodes, world=world)
        gif = out / "closedloop.gif" if seed == cfg.seeds[0] else None
        res = evaluate_closed_loop(
            lambda ai: predict(module, [Scene("cl", "", 0, ai, None)])[0], cl_cfg, gif=gif
        )
        d = res.to_dict()
        metrics["closedloop"] = {
            k: d[k]
            for k in (
                "collision_rate",
                "offroad_rate",
                "progress_m",
                "route_completion",
                "comfort_violation",
                "driving_score",
            )
        }
        metrics["closedloop_episodes"] = d["episodes"]
        metrics["protocols"]["closedloop"] = d["protocol"]
    if cfg.eval.latency_repeats > 0:
        metrics["latency_ms"] = latency_ms(
            module, store.load(tokens[0], with_privileged=False).agent_input, cfg.eval.latency_repeats
        )
    metrics["ego_size_m"] = [EGO_LENGTH, EGO_WIDTH]
    metrics["eval_config"] = to_dict(cfg.eval)
    atomic_write_json(out / "metrics.json", metrics)
    return {k: metrics[k] for k in ("num_scenes", "params_m") if k in metrics}
