"""`drivedistill eval --checkpoint RUN --data STORE`: every metric for one trained student.

    metrics = evaluate_student(load_student("runs/tf"), SceneStore("store"), "val", EvalConfig())

- open loop and PDMS: the student's plans are scored by `metrics.plans.score_scene_plans` (plans in,
  metrics out: ST-P3 + UniAD open loop; PDMS NAVSIM v1.1 by default, EPDMS with
  `--eval.pdms_protocol=navsim-v2`); this module only runs the network (`plan_scenes`);
- closed loop: the student drives in the default world (`metrics.closedloop.evaluate_closed_loop`),
  with the sensors of the world that collected the store (store config "world").
The student sees `AgentInput` only: scenes are loaded with their privileged part for the metrics, but
the batch it receives is collated from the agent input alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drivedistill.config import check, from_dict, load_config, to_dict
from drivedistill.types import AgentInput, Scene
from drivedistill.utils.runtime import select_device


@dataclass
class EvalConfig:
    """Which metrics to run and how (`--eval.<field>=...`)."""

    batch_size: int = field(default=32, metadata=check(ge=1))
    device: str = "auto"
    openloop: bool = True
    occupancy_classes: str = "vehicles+pedestrians"  # ST-P3/VAD; UniAD's rows also use this occupancy
    pdms: bool = True
    # > 0: score only the first N scenes of the split (PDMS is the slow one)
    pdms_max_scenes: int = field(default=0, metadata=check(ge=0))
    pdms_protocol: str = "navsim-v1.1"  # or "navsim-v2" (EPDMS)
    closed_loop: bool = True
    closed_loop_episodes: int = field(default=5, metadata=check(ge=0))
    # episodes differ from collection (which seeds from the world seed)
    closed_loop_seed: int = field(default=1000, metadata=check(ge=0))

    def __post_init__(self) -> None:
        from drivedistill.metrics.pdms import PROTOCOLS

        if self.pdms_protocol not in PROTOCOLS:
            raise ValueError(
                f"eval.pdms_protocol={self.pdms_protocol!r}: choose one of {', '.join(PROTOCOLS)}"
            )


@torch.no_grad()
def plan_scenes(
    student: nn.Module, scenes: list[Scene], batch_size: int = 32, device: str = "cpu"
) -> np.ndarray:
    """(N, 8, 3) plans of `student` (any deployable module: AgentInputBatch → PlanOutput; eval mode,
    no grad) on the agent inputs of `scenes` — the privileged part is stripped before collation."""
    from drivedistill.data.dataset import collate

    student = student.to(device).eval()
    plans = []
    for start in range(0, len(scenes), batch_size):
        chunk = [s.without_privileged() for s in scenes[start : start + batch_size]]
        plans.append(student(collate(chunk).inputs.to(device)).trajectory.float().cpu().numpy())
    return np.concatenate(plans).astype(np.float64) if plans else np.zeros((0, 8, 3))


def student_planner(student: nn.Module, device: str = "cpu") -> Any:
    """A closed-loop planner (`metrics.closedloop.BatchPlanner`): the AgentInputs of the episodes still
    running → their (B, 8, 3) plans in each current ego frame (float64), in one batch."""
    from drivedistill.metrics.closedloop import BatchPlanner

    def plan(inputs: list[AgentInput]) -> np.ndarray:
        scenes = [Scene(f"closed-loop-{i}", "closed-loop", i, x, None) for i, x in enumerate(inputs)]
        return plan_scenes(student, scenes, max(1, len(scenes)), device)

    return BatchPlanner(plan)


def evaluate_student(
    student: nn.Module,
    store: Any,
    split: str = "val",
    cfg: EvalConfig | None = None,
    max_scenes: int = 0,
    gif: str | Path | None = None,
) -> dict[str, Any]:
    """Open-loop (both protocols), PDMS and closed-loop metrics of `student` on `store`'s `split`
    (its first `max_scenes` scenes when > 0); `gif` saves the first closed-loop episode. The result also
    holds the plans ("plans" (N, 8, 3), "tokens")."""
    cfg = cfg or EvalConfig()
    device = select_device(cfg.device)
    tokens = store.tokens(split)[: max_scenes or None]
    scenes = [store.load(t) for t in tokens]
    if not scenes:
        raise ValueError(f"{getattr(store, 'root', store)}: split {split!r} is empty; choose another --split")
    plans = plan_scenes(student, scenes, cfg.batch_size, device)
    out: dict[str, Any] = {"split": split, "num_scenes": len(scenes), "tokens": tokens, "plans": plans}
    out.update(evaluate_plans(plans, scenes, store, cfg, student_planner(student, device), gif))
    return out


def evaluate_plans(
    plans: np.ndarray,
    scenes: list[Scene],
    store: Any,
    cfg: EvalConfig,
    driver: Any,
    gif: str | Path | None = None,
) -> dict[str, Any]:
    """Score (N, 8, 3) plans (box-centre poses, current ego frame) of `scenes` open loop and with PDMS
    (`metrics.plans.score_scene_plans`; this is a thin adapter from `EvalConfig`), and let `driver` (a
    closed-loop planner on AgentInput, or `metrics.closedloop.EXPERT`) drive the closed-loop episodes of the store's world. Keys: "openloop", "pdms", "closed_loop" as enabled."""
    from drivedistill.metrics.plans import PlanMetricsConfig, score_scene_plans

    pcfg = PlanMetricsConfig(
        openloop=cfg.openloop,
        occupancy_classes=cfg.occupancy_classes,
        pdms=cfg.pdms,
        pdms_max_scenes=cfg.pdms_max_scenes,
        pdms_protocol=cfg.pdms_protocol,
    )
    out: dict[str, Any] = score_scene_plans(plans, scenes, pcfg)
    if cfg.closed_loop:
        from drivedistill.metrics.closedloop import ClosedLoopConfig, evaluate_closed_loop
        from drivedistill.world.config import WorldConfig

        world_cfg = store.config.get("world")
        world = from_dict(WorldConfig, world_cfg, "world") if world_cfg else WorldConfig()
        cl = ClosedLoopConfig(episodes=cfg.closed_loop_episodes, seed=cfg.closed_loop_seed, world=world)
        out["closed_loop"] = evaluate_closed_loop(driver, cl, gif=gif).to_dict()
    return out


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of `evaluate_student`'s result (flat, for tables and logs)."""
    flat: dict[str, float] = {}
    openloop = metrics.get("openloop", {})
    for protocol in ("stp3", "uniad"):
        if protocol in openloop:
            flat[f"openloop/{protocol}/l2_avg_m"] = float(openloop[protocol]["l2"]["avg"])
            flat[f"openloop/{protocol}/collision_avg_pct"] = float(openloop[protocol]["collision"]["avg"])
    if "pdms" in metrics:  # the key names the protocol: pdms[navsim-v1.1] or epdms[navsim-v2]
        flat.update({k: float(v) for k, v in metrics["pdms"]["headline"].items()})
    if "closed_loop" in metrics:
        for key in ("driving_score", "collision_rate", "route_completion"):
            flat[f"closed_loop/{key}"] = float(metrics["closed_loop"][key])
    return flat


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drivedistill eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="run directory or checkpoints/step_* directory")
    who.add_argument("--student", help="an untrained registered student (constant_velocity)")
    parser.add_argument("--data", required=True, help="SceneStore directory")
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", help="write all metrics here")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--eval.")]
    if bad:
        parser.error(f"unrecognised arguments {bad}; options look like --eval.closed_loop=false")

    from drivedistill import registry
    from drivedistill.data.store import SceneStore
    from drivedistill.train.checkpoint import load_student

    cfg = load_config(EvalConfig, overrides=[a.replace("--eval.", "--", 1) for a in rest])
    student = load_student(args.checkpoint) if args.checkpoint else registry.build("student", args.student)
    metrics = evaluate_student(student, SceneStore(args.data), args.split, cfg)
    metrics["config"] = to_dict(cfg)
    metrics["plans"] = np.asarray(metrics["plans"]).tolist()
    for key, value in summary(metrics).items():
        print(f"{key:40s} {value:.4f}")
    if args.json:
        from drivedistill.utils.io import atomic_write_json

        atomic_write_json(Path(args.json), metrics)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(summary(metrics)))
    return 0
