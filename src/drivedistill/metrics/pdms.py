"""NAVSIM PDM Score v1.1 (default) and the extended PDMS of NAVSIM v2 (EPDMS): simulate each plan for 4 s
against logged traffic and the map, then score it.

    report = score_plans(scenes, plans)                                   # navsim-v1.1 (the default)
    report = score_plans(scenes, plans, PDMSConfig(protocol="navsim-v2"))  # EPDMS
    report.to_json()["mean"]["pdms"]  /  ["mean"]["epdms"]

navsim-v1.1, per scene: PDMS = NC · DAC · (5·EP + 5·TTC + 2·C) / 12 (DDC reported, weight 0).
navsim-v2, per scene: EPDMS = NC · DAC · DDC · TLC · (5·EP + 5·TTC + 2·LK + 2·HC + 2·EC) / 16, each
sub-metric passed through the human filter (set to 1 where the logged human scores 0 on it, first-stage
scenes only); EC compares the plan with the one of `scene.previous_token` 0.5 s earlier (1 when that
scene is not scored, counted in "ec_evaluated"). Scenes with a `parent_token` are second-stage
(navhard) follow-ups, aggregated in two stages (`two_stage`). The data-set score is the mean of per-scene
scores. A scene that cannot be scored (bad plan shape, NaN, broken scene) is a reported failure with its
reason — never silently dropped (the reference implementation drops them). Every plan is scored in a
batch with the scene's PDM-Closed reference, which sets EP's normaliser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.scene_index import MapIndex, replay_agents
from drivedistill.sim.bicycle import S
from drivedistill.sim.comfort import extended_comfort
from drivedistill.sim.lqr import simulate_plans
from drivedistill.sim.pdm_closed import PDMClosedParams, pdm_closed_plan
from drivedistill.sim.scorer import (
    MULTIPLIERS_V2,
    WEIGHTED_V2,
    ScorerWeights,
    ScorerWeightsV2,
    SubScores,
    SubScoresV2,
    epdms_weighted,
    score_states,
    score_states_v2,
)

PROTOCOL = "navsim-v1.1"  # the default
PROTOCOL_V2 = "navsim-v2"
PROTOCOLS = (PROTOCOL, PROTOCOL_V2)
KEYS = ("pdms", "nc", "dac", "ddc", "ttc", "ep", "c")
KEYS_V2 = ("epdms", "nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec")
KEYS_BY_PROTOCOL = {PROTOCOL: KEYS, PROTOCOL_V2: KEYS_V2}
SCORE_KEY = {PROTOCOL: "pdms", PROTOCOL_V2: "epdms"}
MAX_POSES = 8
TWO_STAGE_SIGMA2 = 0.1  # [m²] Gaussian kernel of the second-stage weights (scene_aggregator.py)


@dataclass(frozen=True)
class PDMSConfig:
    """Scoring knobs; the defaults are NAVSIM's and should not be changed for reported numbers.
    `protocol`: "navsim-v1.1" (PDMS, the default) or "navsim-v2" (EPDMS)."""

    weights: ScorerWeights = field(default_factory=ScorerWeights)
    pdm_closed: PDMClosedParams = field(default_factory=PDMClosedParams)
    protocol: str = PROTOCOL
    weights_v2: ScorerWeightsV2 = field(default_factory=ScorerWeightsV2)
    human_filter: bool = True  # v2 only

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"PDMS protocol {self.protocol!r}: choose one of {PROTOCOLS}")

    @property
    def keys(self) -> tuple[str, ...]:
        return KEYS_BY_PROTOCOL[self.protocol]


@dataclass
class SceneResult:
    """Sub-scores of one plan in one scene, all in [0, 1] (`scores`, keyed by the protocol's KEYS);
    progress values in metres; `endpoint` (2,) the simulated rear axle at 4 s in the scoring frame."""

    token: str
    protocol: str
    scores: dict[str, float]
    progress: float
    reference_progress: float
    endpoint: tuple[float, float] = (math.nan, math.nan)
    filtered: tuple[str, ...] = ()  # v2: sub-metrics the human filter set to 1
    ec_evaluated: bool = False  # v2: EC compared with the previous frame's plan

    def __getattr__(self, name: str) -> float:  # result.pdms, result.nc, …
        scores = self.__dict__.get("scores", {})
        if name in scores:
            return scores[name]
        raise AttributeError(name)

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.scores.items()}


@dataclass
class SceneFailure:
    token: str
    reason: str


@dataclass
class PDMSReport:
    """Per-scene results, failures with reasons, and the means (over scored scenes); first-stage scenes
    only in "mean" — second-stage (navhard) scenes enter through "two_stage"."""

    scenes: list[SceneResult]
    failures: list[SceneFailure]
    protocol: str = PROTOCOL
    parents: dict[str, str] = field(default_factory=dict)  # second-stage token → first-stage token
    starts: dict[str, tuple[float, float]] = field(default_factory=dict)  # second-stage start points

    @property
    def keys(self) -> tuple[str, ...]:
        return KEYS_BY_PROTOCOL[self.protocol]

    def first_stage(self) -> list[SceneResult]:
        return [s for s in self.scenes if s.token not in self.parents]

    def mean(self) -> dict[str, float]:
        first = self.first_stage()
        if not first:
            return {k: math.nan for k in self.keys}
        return {k: float(np.mean([s.scores[k] for s in first])) for k in self.keys}

    def two_stage(self) -> dict[str, Any] | None:
        """navhard's two-stage aggregation (run_pdm_score.py + scene_aggregator.py): per first-stage scene,
        its follow-ups are averaged with weights exp(−d²/(2·0.1)) normalised (uniform when they all
        vanish), d = distance between the first-stage plan's simulated end point and the follow-up's
        start; the group's score is stage 1 × stage 2 (per sub-metric), the data-set score their mean.
        None when no scene is second-stage."""
        if not self.parents:
            return None
        by_token = {s.token: s for s in self.scenes}
        groups: list[dict[str, float]] = []
        stage1: list[dict[str, float]] = []
        stage2: list[dict[str, float]] = []
        missing: list[str] = []
        for first in self.first_stage():
            follow = [by_token[t] for t, p in self.parents.items() if p == first.token and t in by_token]
            if not follow:
                missing.append(first.token)
                continue
            d2 = np.array(
                [
                    (first.endpoint[0] - self.starts[f.token][0]) ** 2
                    + (first.endpoint[1] - self.starts[f.token][1]) ** 2
                    for f in follow
                ]
            )
            w = np.exp(-d2 / (2.0 * TWO_STAGE_SIGMA2))
            w = np.full(len(follow), 1.0 / len(follow)) if np.isclose(w.sum(), 0.0) else w / w.sum()
            s2 = {k: float(sum(wi * f.scores[k] for wi, f in zip(w, follow))) for k in self.keys}
            stage1.append(first.scores)
            stage2.append(s2)
            groups.append({k: first.scores[k] * s2[k] for k in self.keys})

        def avg(rows: list[dict[str, float]]) -> dict[str, float]:
            return {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in self.keys}

        return {
            "mean": avg(groups),
            "stage1": avg(stage1),
            "stage2": avg(stage2),
            "num_groups": len(groups),
            "without_second_stage": missing,
        }

    def to_json(self) -> dict[str, Any]:
        first = self.first_stage()
        failed_first = [f for f in self.failures if f.token not in self.parents]
        n = len(first) + len(failed_first)
        score_key = SCORE_KEY[self.protocol]
        total = sum(s.scores[score_key] for s in first)
        mean = self.mean()
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "score_key": score_key,
            "headline": {f"{score_key}[{self.protocol}]": mean[score_key]},
            "num_scenes": n,
            "num_scored": len(first),
            "mean": mean,
            f"{score_key}_failures_as_zero": total / n if n else math.nan,
            "failures": [asdict(f) for f in self.failures],
            "scenes": {s.token: s.to_json() for s in self.scenes},
        }
        if self.protocol == PROTOCOL_V2:
            out["human_filter"] = {s.token: list(s.filtered) for s in first if s.filtered}
            out["ec_evaluated"] = sum(s.ec_evaluated for s in first)
            two = self.two_stage()
            if two is not None:
                out["two_stage"] = two
        return out


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


@dataclass
class ProposalScoresV2:
    """EPDMS sub-scores (K,) of K proposals in one scene (after the human filter), keyed like KEYS_V2
    except "ec" (it needs the previous frame); "epdms" here leaves EC out (weights /14). `states`
    (K, 41, NUM_STATES) are the simulated states (for EC and the two-stage end points)."""

    token: str
    scores: dict[str, np.ndarray]
    progress: np.ndarray
    reference_progress: float
    states: np.ndarray
    filtered: tuple[str, ...]


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


def _pad(props: np.ndarray) -> np.ndarray:
    return np.concatenate([props, np.repeat(props[:, -1:], MAX_POSES - props.shape[1], axis=1)], axis=1)


def _selecting_with_protocol(cfg: PDMSConfig) -> PDMSConfig:
    """cfg with PDM-Closed selecting its plan by the scoring protocol (the EP reference of a protocol is
    PDM-Closed of that protocol)."""
    if cfg.pdm_closed.selection == cfg.protocol:
        return cfg
    return replace(cfg, pdm_closed=replace(cfg.pdm_closed, selection=cfg.protocol))


def _prepare(
    scene: MetricScene,
    proposals: np.ndarray,
    cfg: PDMSConfig,
    reference: np.ndarray | None,
    map_index: MapIndex | None,
) -> tuple[np.ndarray, MapIndex, np.ndarray]:
    """Checked proposals (K, ≤8, 3), the scene's map index and PDM-Closed reference (8, 3) (built when None)."""
    props = check_plans(proposals, scene.token)
    map_index = map_index or MapIndex(scene)
    if reference is None:
        reference = pdm_closed_plan(scene, map_index, cfg.pdm_closed)
    return props, map_index, np.asarray(reference, np.float64)


def score_proposals(
    scene: MetricScene,
    proposals: np.ndarray,
    cfg: PDMSConfig | None = None,
    reference: np.ndarray | None = None,
    map_index: MapIndex | None = None,
) -> ProposalScores:
    """PDMS v1.1 of K proposals (K, ≤8, 3) of one scene in one batch with its PDM-Closed `reference` (8, 3)
    (computed when None). Each proposal's EP is normalised by max(its progress, PDM-Closed's)."""
    cfg = cfg or PDMSConfig()
    props, map_index, reference = _prepare(scene, proposals, cfg, reference, map_index)
    states = simulate_plans(scene, np.concatenate([reference[None], _pad(props)]))
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


def _human_filter_applies(scene: MetricScene, cfg: PDMSConfig) -> bool:
    """NAVSIM v2 filters first-stage scenes with a complete logged future (and `cfg.human_filter`)."""
    return cfg.human_filter and not scene.parent_token and bool(scene.human_valid.all())


def _filtered_keys(sub: SubScoresV2, row: int) -> dict[str, bool]:
    """Which v2 sub-metrics the plan in `row` of `sub` scores exactly 0 on."""
    return {k: bool(getattr(sub, k)[row] == 0.0) for k in (*MULTIPLIERS_V2, *WEIGHTED_V2)}


def human_filter_mask(scene: MetricScene, map_index: MapIndex, cfg: PDMSConfig) -> dict[str, bool]:
    """Which v2 sub-metrics the logged human breaks (scores 0 on) in `scene`: NAVSIM v2 (fixed in
    Sep 2025, `pdm_score.py`) scores the human plan alone, without its history, and sets every such
    sub-metric of the agent to 1. Empty when the logged future is incomplete or the scene is a
    second-stage one. (`score_proposals_v2` scores the human plan as a `solo` row of the proposals'
    batch instead, with the same result.)"""
    if not _human_filter_applies(scene, cfg):
        return {}
    states = simulate_plans(scene, np.asarray(scene.human_future, np.float64)[None])
    sub = score_states_v2(
        states, scene, map_index, replay_agents(scene), scene.route, None, cfg.weights_v2, with_history=False
    )
    return _filtered_keys(sub, 0)


def score_proposals_v2(
    scene: MetricScene,
    proposals: np.ndarray,
    cfg: PDMSConfig | None = None,
    reference: np.ndarray | None = None,
    map_index: MapIndex | None = None,
) -> ProposalScoresV2:
    """EPDMS (NAVSIM v2) of K proposals (K, ≤8, 3) of one scene in one batch with its PDM-Closed
    `reference`; the human filter is applied (first-stage scenes), the human plan simulated and scored
    in the same batch as a `solo` row. EC is not included (see `ProposalScoresV2`): `score_plans` adds
    it from the previous frame."""
    cfg = _selecting_with_protocol(cfg or PDMSConfig(protocol=PROTOCOL_V2))
    props, map_index, reference = _prepare(scene, proposals, cfg, reference, map_index)
    rows = [reference[None], _pad(props)]
    with_human = _human_filter_applies(scene, cfg)
    if with_human:
        rows.append(np.asarray(scene.human_future, np.float64)[None])
    batch = np.concatenate(rows)
    solo = np.zeros(len(batch), bool)
    solo[len(props) + 1 :] = True
    all_states = simulate_plans(scene, batch)
    sub = score_states_v2(
        all_states, scene, map_index, replay_agents(scene), scene.route, 0, cfg.weights_v2, solo=solo
    )
    end = len(props) + 1
    scores = {k: np.array(getattr(sub, k)[1:end], dtype=np.float64) for k in (*MULTIPLIERS_V2, *WEIGHTED_V2)}
    mask = _filtered_keys(sub, end) if with_human else {}
    filtered = tuple(k for k, hit in mask.items() if hit)
    for k in filtered:
        scores[k] = np.ones_like(scores[k])
    multi = np.prod([scores[k] for k in MULTIPLIERS_V2], axis=0)
    w = cfg.weights_v2
    scores["epdms"] = multi * epdms_weighted(scores["ep"], scores["ttc"], scores["lk"], scores["hc"], None, w)
    return ProposalScoresV2(
        scene.token, scores, sub.progress[1:end], float(sub.progress[0]), all_states[1:end], filtered
    )


def score_plans(
    scenes: Sequence[MetricScene],
    plans: np.ndarray | Sequence[np.ndarray],
    cfg: PDMSConfig | None = None,
    references: dict[str, np.ndarray] | None = None,
    failures: Sequence[tuple[str, str]] = (),
) -> PDMSReport:
    """PDMS (cfg.protocol; NAVSIM v1.1 by default) of one plan per scene. plans (N, 8, 3) (or a list of
    (≤8, 3)), rear-axle frame at t = 0, poses at 0.5 … 4 s. `references` may supply precomputed
    PDM-Closed plans by token; `failures` (token, reason) are scenes that could not even be read."""
    cfg = _selecting_with_protocol(cfg or PDMSConfig())
    if len(plans) != len(scenes):
        raise ValueError(f"score_plans: {len(scenes)} scenes but {len(plans)} plans; pass one plan per scene")
    v2 = cfg.protocol == PROTOCOL_V2
    results: list[SceneResult] = []
    failed = [SceneFailure(t, r) for t, r in failures]
    states_by_token: dict[str, np.ndarray] = {}
    for scene, plan in zip(scenes, plans):
        try:
            arr = check_plans(np.asarray(plan, np.float64)[None], scene.token)
            ref = None if references is None else references.get(scene.token)
            map_index = MapIndex(scene)
            if ref is None:
                ref = pdm_closed_plan(scene, map_index, cfg.pdm_closed)
            if v2:
                o2 = score_proposals_v2(scene, arr, cfg, reference=ref, map_index=map_index)
                states_by_token[scene.token] = o2.states[0]
                end = o2.states[0, -1]
                results.append(
                    SceneResult(
                        scene.token,
                        PROTOCOL_V2,
                        {k: float(v[0]) for k, v in o2.scores.items()},
                        float(o2.progress[0]),
                        o2.reference_progress,
                        (float(end[S.X]), float(end[S.Y])),
                        o2.filtered,
                    )
                )
                continue
            out = score_proposals(scene, arr, cfg, reference=ref, map_index=map_index)
        except (ValueError, np.linalg.LinAlgError) as e:  # reported, never dropped
            failed.append(SceneFailure(scene.token, f"{type(e).__name__}: {e}"))
            continue
        scores = {k: float(getattr(out, k)[0]) for k in KEYS}
        results.append(
            SceneResult(scene.token, PROTOCOL, scores, float(out.progress[0]), out.reference_progress)
        )
    report = PDMSReport(results, failed, cfg.protocol)
    if v2:
        _add_extended_comfort(report, scenes, states_by_token, cfg.weights_v2)
        report.parents = {s.token: s.parent_token for s in scenes if s.parent_token}
        report.starts = {
            s.token: (float(s.ego_pose[0]), float(s.ego_pose[1])) for s in scenes if s.parent_token
        }
    return report


def _add_extended_comfort(
    report: PDMSReport, scenes: Sequence[MetricScene], states: dict[str, np.ndarray], w: ScorerWeightsV2
) -> None:
    """EC of each scored scene against its `previous_token`'s plan (when scored), then the final EPDMS
    with EC weighted 2 (NAVSIM's `compute_final_scores`); EC = 1 where no previous frame was scored."""
    prev_of = {s.token: s.previous_token for s in scenes}
    for res in report.scenes:
        prev = prev_of.get(res.token, "")
        ec = 1.0
        if prev and prev in states and res.token in states:
            ec = float(extended_comfort(states[res.token][None], states[prev][None])[0])
            res.ec_evaluated = True
        sc = res.scores
        multi = sc["nc"] * sc["dac"] * sc["ddc"] * sc["tlc"]
        weighted = epdms_weighted(
            np.array(sc["ep"]), np.array(sc["ttc"]), np.array(sc["lk"]), np.array(sc["hc"]), np.array(ec), w
        )
        sc["ec"] = ec
        sc["epdms"] = float(multi * weighted)
        res.scores = {k: sc[k] for k in KEYS_V2}
