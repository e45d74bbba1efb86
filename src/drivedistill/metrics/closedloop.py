"""Closed-loop driving in the default world (protocol "drivedistill-closedloop-v1").

    drivedistill eval closedloop --planner expert|constant_velocity [--episodes N] [--gif out.gif] [--json OUT.json]

Protocol: episode i uses scenario `scenarios[i % len]` of seed `seed` (distinct from the collection seed
by default), 2 s of expert driving, then `duration_s` of the planner (called at 2 Hz on `AgentInput`
only, its plan tracked at 10 Hz, see world/closedloop.py). The episode ends at the first collision.
Per episode:
- progress_m        arc length gained along the route centreline (lane-0 centrelines of the route roads)
- route_completion  min(1, progress / the privileged expert's progress in the same episode)
- collision / offroad   the simulator's crash flag; any step with the ego box centre outside every lane
- comfort_violation fraction of 0.5 s steps breaking nuPlan-like bounds: longitudinal acceleration
                    outside [-4.05, 2.40] m/s², |lateral acceleration| > 4.89 m/s², |jerk| > 4.13 m/s³,
                    |yaw rate| > 0.95 rad/s (finite differences at 2 Hz)
- driving_score     route_completion × 0.60 if it collided (CARLA's vehicle-collision penalty) × 0.70 if
                    it went off-road (CARLA's off-route spirit); comfort is reported, not penalised
Aggregates are means over episodes; every result dict carries `protocol`.

The episodes run in lockstep: at each 2 Hz planning step the observations of every episode still running
go to the planner together, so a `BatchPlanner` (a student planning a batch in one forward pass — for a
language student one batched greedy decode) costs one call per step, not one per episode. The episodes
are independent (each seeds its own simulator), so the records equal those of running them one by one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.config import check, config_hash
from drivedistill.registry import register
from drivedistill.types import NUM_FUTURE, AgentInput
from drivedistill.world.config import SIM_HZ, WorldConfig

PROTOCOL = "drivedistill-closedloop-v1"
COLLISION_PENALTY, OFFROAD_PENALTY = 0.60, 0.70
LON_ACC = (-4.05, 2.40)  # [m/s^2]
COMFORT = {"lat_acc": 4.89, "jerk": 4.13, "yaw_rate": 0.95}
EXPERT = "expert"  # pass as `planner` to let the privileged expert drive (the reference row)

Planner = Callable[[AgentInput], np.ndarray]


@dataclass(frozen=True)
class BatchPlanner:
    """A planner for several episodes at once: `plan(inputs)` maps a list of B `AgentInput` to (B, 8, 3)
    plans in each one's ego frame."""

    plan: Callable[[list[AgentInput]], np.ndarray]

    @staticmethod
    def of(planner: Planner) -> BatchPlanner:
        """One call of `planner` per input."""
        return BatchPlanner(lambda inputs: np.stack([np.asarray(planner(x)) for x in inputs]))


@dataclass
class ClosedLoopConfig:
    """episodes, simulated seconds per episode after the 2 s hand-over, seed, and the world (sensors,
    scenarios, traffic density, event probabilities)."""

    episodes: int = field(default=10, metadata=check(ge=1))
    duration_s: float = field(default=12.0, metadata=check(ge=1))
    seed: int = field(default=1000, metadata=check(ge=0))
    world: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"ClosedLoopConfig.episodes: must be ≥ 1, got {self.episodes}")
        if self.duration_s < 1.0:
            raise ValueError(f"ClosedLoopConfig.duration_s: must be ≥ 1 s, got {self.duration_s}")


@dataclass
class ClosedLoopResult:
    """Aggregates (means over episodes) and one record per episode."""

    collision_rate: float
    offroad_rate: float
    progress_m: float
    route_completion: float
    comfort_violation: float
    driving_score: float
    episodes: list[dict[str, Any]]
    protocol: str = PROTOCOL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, float]:
        """The aggregate fields (SUMMARY_KEYS), without the per-episode records."""
        return {k: float(getattr(self, k)) for k in SUMMARY_KEYS}


SUMMARY_KEYS = (
    "collision_rate",
    "offroad_rate",
    "progress_m",
    "route_completion",
    "comfort_violation",
    "driving_score",
)
# expert reference progress per (config hash, episode): deterministic, so it is driven once per process
_REFERENCE_PROGRESS: dict[tuple[str, int], float] = {}


def constant_velocity(inputs: AgentInput) -> np.ndarray:
    """Reference planner: keep the current speed straight ahead. (8, 3) poses in the ego frame."""
    t = np.arange(1, NUM_FUTURE + 1, dtype=np.float32) * 0.5
    return np.stack([inputs.ego_status[0] * t, 0 * t, 0 * t], axis=1)


def route_polyline(scenario: str, route_edges: list[tuple[str, str]]) -> np.ndarray:
    """(R, 2) world-frame centreline of the route (lane 0 of each road; twice round a loop)."""
    from drivedistill.world.scenarios import network

    roadmap = network(scenario)[1]
    edges = route_edges * 2 if scenario == "racetrack" else route_edges
    return np.concatenate([roadmap.center[roadmap.lane_slice((a, b, 0))] for a, b in edges])


def route_progress(poses: np.ndarray, route: np.ndarray) -> float:
    """Arc length [m] gained along `route` (R, 2) between the first and last of `poses` (N, 3), projecting
    each pose onto a window of the route just after the previous projection (loops stay unambiguous)."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(route, axis=0).T))])
    idx = int(np.argmin(np.hypot(*(route[: max(2, len(route) // 2)] - poses[0, :2]).T)))
    start = arc[idx]
    for p in poses[1:]:
        lo, hi = np.searchsorted(arc, [arc[idx] - 10.0, arc[idx] + 40.0])
        window = route[lo : max(hi, lo + 1)]
        idx = int(lo + np.argmin(np.hypot(*(window - p[:2]).T)))
    return float(arc[idx] - start)


def comfort_violation(poses: np.ndarray, speeds: np.ndarray) -> float:
    """Fraction of 0.5 s steps violating the comfort bounds (see module docstring)."""
    k = SIM_HZ // 2
    p, v = poses[::k], speeds[::k]
    if len(v) < 3:
        return 0.0
    dt = 0.5
    lon = np.diff(v) / dt
    yaw_rate = np.angle(np.exp(1j * np.diff(p[:, 2]))) / dt
    lat = v[1:] * yaw_rate
    jerk = np.concatenate([[0.0], np.diff(lon) / dt])
    lo, hi = LON_ACC
    bad = (lon < lo) | (lon > hi) | (np.abs(lat) > COMFORT["lat_acc"]) | (np.abs(jerk) > COMFORT["jerk"])
    bad |= np.abs(yaw_rate) > COMFORT["yaw_rate"]
    return float(bad.mean())


def episodes_by_scenario(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per-episode records (`ClosedLoopResult.episodes`, of any number of seeds) counted per scenario:
    {scenario: {"episodes", "offroad", "collided"}} — where a planner leaves the road or crashes."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        c = out.setdefault(str(rec["scenario"]), {"episodes": 0, "offroad": 0, "collided": 0})
        c["episodes"] += 1
        c["offroad"] += int(bool(rec["offroad"]))
        c["collided"] += int(bool(rec["collided"]))
    return dict(sorted(out.items()))


def _record(env: Any, scenario: str, index: int) -> dict[str, Any]:
    s = env.summary()
    return {
        "index": index,
        "scenario": scenario,
        "collided": s["collided"],
        "offroad": s["offroad_steps"] > 0,
        "progress_m": route_progress(s["poses"], route_polyline(scenario, s["route_edges"])),
        "comfort_violation": comfort_violation(s["poses"], s["speeds"]),
        "duration_s": (len(s["poses"]) - 1) / SIM_HZ,
    }


def run_closed_loop_episodes(
    planner: Planner | BatchPlanner | str,
    cfg: ClosedLoopConfig,
    indices: list[int],
    record: int | None = None,
) -> list[tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]]:
    """Episodes `indices` in lockstep (see module docstring); per episode its record (without route
    completion) and the (camera, BEV) frames recorded for episode `record` (empty for the others)."""
    from drivedistill.world.closedloop import ClosedLoopEnv

    expert = planner == EXPERT
    batch = planner if isinstance(planner, BatchPlanner) or expert else BatchPlanner.of(planner)  # type: ignore[arg-type]
    scenarios = [cfg.world.scenarios[i % len(cfg.world.scenarios)] for i in indices]
    envs = [ClosedLoopEnv(cfg.world, cfg.duration_s, record=i == record) for i in indices]
    obs = [env.reset(cfg.seed, sc, i, expert=expert) for env, sc, i in zip(envs, scenarios, indices)]
    while running := [k for k, env in enumerate(envs) if not env.done]:
        if expert:
            plans: list[np.ndarray | None] = [None] * len(running)
        else:
            planned = np.asarray(batch.plan([obs[k] for k in running]), np.float64)  # type: ignore[union-attr]
            if planned.shape != (len(running), NUM_FUTURE, 3):
                raise ValueError(
                    f"closed loop: the planner returned plans of shape {planned.shape} for {len(running)} "
                    f"inputs; expected ({len(running)}, {NUM_FUTURE}, 3)"
                )
            plans = list(planned)
        for k, plan in zip(running, plans):
            obs[k] = envs[k].step(plan)
    return [(_record(env, sc, i), env.trace.frames) for env, sc, i in zip(envs, scenarios, indices)]


def run_closed_loop_episode(
    planner: Planner | BatchPlanner | str, cfg: ClosedLoopConfig, index: int, record: bool = False
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """One episode; returns its record (without route completion) and the recorded (camera, BEV) frames."""
    return run_closed_loop_episodes(planner, cfg, [index], record=index if record else None)[0]


def evaluate_closed_loop(
    planner: Planner | BatchPlanner | str, cfg: ClosedLoopConfig, gif: str | Path | None = None
) -> ClosedLoopResult:
    """Run `cfg.episodes` closed-loop episodes with `planner` (a callable on `AgentInput` returning an
    (8, 3) plan in the ego frame, a `BatchPlanner`, or `EXPERT`); the expert's progress on the same
    episodes is the route reference. `gif` writes an animation of the first episode."""
    indices = list(range(cfg.episodes))
    ran = run_closed_loop_episodes(planner, cfg, indices, record=0 if gif is not None else None)
    missing = [i for i in indices if (config_hash(cfg), i) not in _REFERENCE_PROGRESS]
    if planner == EXPERT:
        _REFERENCE_PROGRESS.update(
            {(config_hash(cfg), i): rec["progress_m"] for i, (rec, _) in zip(indices, ran)}
        )
    elif missing:
        for i, (rec, _) in zip(missing, run_closed_loop_episodes(EXPERT, cfg, missing)):
            _REFERENCE_PROGRESS[(config_hash(cfg), i)] = rec["progress_m"]
    records = []
    for i, (rec, frames) in zip(indices, ran):
        ref_progress = _REFERENCE_PROGRESS[(config_hash(cfg), i)]
        rec["reference_progress_m"] = ref_progress
        rec["route_completion"] = float(min(1.0, max(0.0, rec["progress_m"]) / max(ref_progress, 1.0)))
        penalty = (COLLISION_PENALTY if rec["collided"] else 1.0) * (
            OFFROAD_PENALTY if rec["offroad"] else 1.0
        )
        rec["driving_score"] = rec["route_completion"] * penalty
        records.append(rec)
        if frames:
            save_episode_gif(frames, gif)  # type: ignore[arg-type]

    def mean(key: str) -> float:
        return float(np.mean([float(r[key]) for r in records]))

    return ClosedLoopResult(
        collision_rate=mean("collided"),
        offroad_rate=mean("offroad"),
        progress_m=mean("progress_m"),
        route_completion=mean("route_completion"),
        comfort_violation=mean("comfort_violation"),
        driving_score=mean("driving_score"),
        episodes=records,
    )


def save_episode_gif(frames: list[tuple[np.ndarray, np.ndarray]], path: str | Path, scale: int = 2) -> Path:
    """Write an animated GIF (2 Hz) of (camera (H, W, 3), BEV (Hb, Wb, 3)) frames side by side."""
    from PIL import Image

    if not frames:
        raise ValueError("save_episode_gif: no frames (run the episode with record=True)")
    images = []
    for camera, bev in frames:
        h = camera.shape[0]
        bev_img = Image.fromarray(bev[..., :3]).resize(
            (h * bev.shape[1] // bev.shape[0], h), Image.Resampling.NEAREST
        )
        canvas = Image.new("RGB", (camera.shape[1] + bev_img.width, h))
        canvas.paste(Image.fromarray(camera), (0, 0))
        canvas.paste(bev_img, (camera.shape[1], 0))
        images.append(canvas.resize((canvas.width * scale, h * scale), Image.Resampling.NEAREST))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out, save_all=True, append_images=images[1:], duration=500, loop=0)
    return out


@register("metric", "closedloop", ClosedLoopConfig)
def build(cfg: ClosedLoopConfig) -> Callable[[Planner | str], ClosedLoopResult]:
    """The evaluator bound to `cfg`: call it with a planner."""
    return lambda planner: evaluate_closed_loop(planner, cfg)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drivedistill eval closedloop", description=__doc__.splitlines()[0])
    parser.add_argument("--planner", choices=[EXPERT, "constant_velocity"], required=True)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of planner control per episode")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--gif", help="write an animated GIF of the first episode")
    parser.add_argument("--json", help="write the result (with per-episode records) as JSON")
    args = parser.parse_args(argv)
    cfg = ClosedLoopConfig(episodes=args.episodes, duration_s=args.duration, seed=args.seed)
    planner: Planner | str = EXPERT if args.planner == EXPERT else constant_velocity
    result = evaluate_closed_loop(planner, cfg, gif=args.gif)
    out = result.to_dict()
    for key, value in result.summary().items():
        print(f"{key:>18}: {value:.3f}")
    print(f"{'protocol':>18}: {out['protocol']}")
    if args.json:
        from drivedistill.utils.io import atomic_write_json

        atomic_write_json(Path(args.json), json.loads(json.dumps(out, default=float)))
    return 0 if all(math.isfinite(out[k]) for k in ("driving_score", "progress_m")) else 1
