"""NAVSIM PDM Score v1.1: simulate each plan for 4 s against logged traffic and the map, then score it.

    report = score_plans(scenes, plans)          # plans (N, 8, 3), rear-axle frame, 0.5 s steps
    report.to_json()["mean"]["pdms"]

Per scene: PDMS = NC · DAC · (5·EP + 5·TTC + 2·C) / 12 (DDC reported, weight 0). The data-set score is
the mean of per-scene scores. A scene that cannot be scored (bad plan shape, NaN, broken scene) is a
reported failure with its reason — never silently dropped (the reference implementation drops them).
Every plan is scored in a batch with the scene's PDM-Closed reference, which sets EP's normaliser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.scene_index import MapIndex, replay_agents
from drivedistill.sim.lqr import simulate_plans
from drivedistill.sim.pdm_closed import PDMClosedParams, pdm_closed_plan
from drivedistill.sim.scorer import ScorerWeights, SubScores, score_states

PROTOCOL = "navsim-v1.1"  # the default
PROTOCOLS = (PROTOCOL,)
KEYS = ("pdms", "nc", "dac", "ddc", "ttc", "ep", "c")
MAX_POSES = 8


@dataclass(frozen=True)
class PDMSConfig:
    """Scoring knobs; the defaults are NAVSIM v1.1 and should not be changed for reported numbers."""

    weights: ScorerWeights = field(default_factory=ScorerWeights)
    pdm_closed: PDMClosedParams = field(default_factory=PDMClosedParams)
    protocol: str = PROTOCOL

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"PDMS protocol {self.protocol!r}: choose one of {PROTOCOLS}")


@dataclass
class SceneResult:
    """Sub-scores of one plan in one scene, all in [0, 1]; progress values in metres."""

    token: str
    pdms: float
    nc: float
    dac: float
    ddc: float
    ttc: float
    ep: float
    c: float
    progress: float
    reference_progress: float

    def to_json(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in KEYS}


@dataclass
class SceneFailure:
    token: str
    reason: str


@dataclass
class PDMSReport:
    """Per-scene results, failures with reasons, and the means (over scored scenes)."""

    scenes: list[SceneResult]
    failures: list[SceneFailure]

    def mean(self) -> dict[str, float]:
        if not self.scenes:
            return {k: math.nan for k in KEYS}
        return {k: float(np.mean([getattr(s, k) for s in self.scenes])) for k in KEYS}

    def to_json(self) -> dict[str, Any]:
        n = len(self.scenes) + len(self.failures)
        total = sum(s.pdms for s in self.scenes)
        return {
            "protocol": PROTOCOL,
            "num_scenes": n,
            "num_scored": len(self.scenes),
            "mean": self.mean(),
            "pdms_failures_as_zero": total / n if n else math.nan,
            "failures": [asdict(f) for f in self.failures],
            "scenes": {s.token: s.to_json() for s in self.scenes},
        }


@dataclass
class ProposalScores:
    """Sub-scores (K,) of K proposals in one scene, each normalised against PDM-Closed as a lone plan."""

    token: str
    pdms: np.ndarray
    nc: np.ndarray
    dac: np.ndarray
    ddc: np.ndarray
    ttc: np.ndarray
    ep: np.ndarray
    c: np.ndarray
    progress: np.ndarray
    reference_progress: float  # [m] PDM-Closed's raw progress along the centerline


def check_plans(plans: np.ndarray, token: str) -> np.ndarray:
    """Validate (K, T, 3) plans with 1 ≤ T ≤ 8, finite; returns float64. Raises ValueError naming the scene."""
    arr = np.asarray(plans, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 3 or not 1 <= arr.shape[1] <= MAX_POSES:
        raise ValueError(
            f"scene {token}: plan must be (8, 3) x, y, yaw poses at 0.5 s, got shape {arr.shape[1:]}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"scene {token}: plan contains NaN or Inf")
    return arr


def score_proposals(
    scene: MetricScene,
    proposals: np.ndarray,
    cfg: PDMSConfig | None = None,
    reference: np.ndarray | None = None,
    map_index: MapIndex | None = None,
) -> ProposalScores:
    """Score K proposals (K, ≤8, 3) of one scene in one batch with its PDM-Closed `reference` (8, 3)
    (computed when None). Each proposal's EP is normalised by max(its progress, PDM-Closed's)."""
    cfg = cfg or PDMSConfig()
    props = check_plans(proposals, scene.token)
    map_index = map_index or MapIndex(scene)
    if reference is None:
        reference = pdm_closed_plan(scene, map_index, cfg.pdm_closed)
    props = np.concatenate([props, np.repeat(props[:, -1:], MAX_POSES - props.shape[1], axis=1)], axis=1)
    batch = np.concatenate([np.asarray(reference, np.float64)[None], props])
    states = simulate_plans(scene, batch)
    agents = replay_agents(scene)
    sub: SubScores = score_states(
        states, scene, map_index, agents, scene.route, reference=0, weights=cfg.weights
    )
    return ProposalScores(
        scene.token,
        sub.score[1:],
        sub.nc[1:],
        sub.dac[1:],
        sub.ddc[1:],
        sub.ttc[1:],
        sub.ep[1:],
        sub.c[1:],
        sub.progress[1:],
        float(sub.progress[0]),
    )


def score_plans(
    scenes: Sequence[MetricScene],
    plans: np.ndarray | Sequence[np.ndarray],
    cfg: PDMSConfig | None = None,
    references: dict[str, np.ndarray] | None = None,
) -> PDMSReport:
    """PDMS v1.1 of one plan per scene. plans (N, 8, 3) (or a list of (≤8, 3)), rear-axle frame at t = 0,
    poses at 0.5 … 4 s. `references` may supply precomputed PDM-Closed plans by token."""
    cfg = cfg or PDMSConfig()
    if len(plans) != len(scenes):
        raise ValueError(f"score_plans: {len(scenes)} scenes but {len(plans)} plans; pass one plan per scene")
    results: list[SceneResult] = []
    failures: list[SceneFailure] = []
    for scene, plan in zip(scenes, plans):
        try:
            arr = check_plans(np.asarray(plan, np.float64)[None], scene.token)
            ref = None if references is None else references.get(scene.token)
            map_index = MapIndex(scene)
            if ref is None:
                ref = pdm_closed_plan(scene, map_index, cfg.pdm_closed)
            out = score_proposals(scene, arr, cfg, reference=ref, map_index=map_index)
        except (ValueError, np.linalg.LinAlgError) as e:  # reported, never dropped
            failures.append(SceneFailure(scene.token, f"{type(e).__name__}: {e}"))
            continue
        results.append(
            SceneResult(
                scene.token,
                float(out.pdms[0]),
                float(out.nc[0]),
                float(out.dac[0]),
                float(out.ddc[0]),
                float(out.ttc[0]),
                float(out.ep[0]),
                float(out.c[0]),
                float(out.progress[0]),
                out.reference_progress,
            )
        )
    return PDMSReport(results, failures)
