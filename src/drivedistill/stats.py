"""Paired comparisons: does a recipe row beat its baseline on the same student and the same seeds?

    comparisons = compare_rows(per_seed, rows)        # → results.json["comparisons"]

For every (row, reference) pair — a recipe row against its baseline (same student, method `imitation`;
the VLA students against `vla/vla_sft`), or against one of its controls when the pipeline declares them —
and every headline metric (`METRICS`):

- **difference** = row − reference, paired: seed k of the row against seed k of the reference, or, when
  the two share fewer than two seeds, scene i against scene i (episode i in closed loop) within their one
  common seed, from the per-scene values every eval stage writes (metrics.json "per_scene");
- **interval**: 95 % percentile bootstrap of the mean difference (`scipy.stats.bootstrap`, 9 999
  resamples, fixed generator) over the paired units (seeds, or scenes/episodes);
- **p-value**: over seeds a paired t-test (`scipy.stats.ttest_rel`); over scenes a paired sign-flip
  permutation test of the mean difference (`scipy.stats.permutation_test`, 9 999 resamples) — scene
  differences are far from normal (collisions are 0/1 per step) and often tied at 0;
- **correction** for the number of tests in the run: Holm's step-down (family-wise error, the default),
  or Benjamini–Hochberg (`scipy.stats.false_discovery_control`, false discovery rate);
- **verdict** per metric from the corrected p-value and the metric's direction (lower L2 / collision is
  better): "helps", "hurts" or "no evidence"; "not tested" with the reason when there is nothing to pair.

Seeds are the unit whenever there are two or more: a scene interval within one seed says nothing about
another training run, only about these validation scenes. Schema and reading: docs/statistics.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
N_RESAMPLES = 9999
CORRECTIONS = ("holm", "bh")


@dataclass(frozen=True)
class Metric:
    """A headline metric: its key (the protocol named; also the key of metrics.json "per_scene"), where
    its per-seed value sits in a metrics.json / results.json row, and its direction."""

    key: str
    label: str
    path: tuple[str, ...]
    lower_is_better: bool
    unit: str
    unit_of_pairing: str  # what a per-scene value is: one validation scene or one closed-loop episode


METRICS: tuple[Metric, ...] = (
    Metric("openloop/stp3/l2_avg_m", "L2 avg (ST-P3)", ("openloop", "stp3", "l2", "avg"), True, "m", "scene"),
    Metric(
        "openloop/uniad/l2_avg_m", "L2 avg (UniAD)", ("openloop", "uniad", "l2", "avg"), True, "m", "scene"
    ),
    Metric(
        "openloop/stp3/collision_avg_pct",
        "Col. avg (ST-P3)",
        ("openloop", "stp3", "collision", "avg"),
        True,
        "%",
        "scene",
    ),
    Metric("pdms/navsim-v1.1", "PDMS (NAVSIM v1.1)", ("pdms", "pdms"), False, "", "scene"),
    Metric(
        "closedloop/driving_score",
        "driving score (closed loop)",
        ("closedloop", "driving_score"),
        False,
        "",
        "episode",
    ),
)

BASELINE_METHODS = {"imitation", "vla_sft"}  # the rows recipes are compared against (by the fallback rule)
REFERENCE_STUDENTS = {"expert", "oracle"}  # privileged reference rows: never compared


@dataclass(frozen=True)
class Pair:
    """One comparison: `row` against `reference` ("baseline" or "control"); `source` says where the
    pairing came from ("declared" by the pipeline, or the fallback "rule")."""

    row: str
    reference: str
    kind: str = "baseline"
    source: str = "rule"


def fallback_baseline(name: str, student: str, method: str, rows: Sequence[str]) -> str | None:
    """The baseline of a row when the pipeline declares none: the same student trained by imitation
    (`<student>/imitation`); a VLA student against `vla/vla_sft`. None for the baselines themselves,
    untrained rows (method "none") and the privileged reference rows."""
    if method in BASELINE_METHODS or method in ("none", "privileged") or student in REFERENCE_STUDENTS:
        return None
    candidate = "vla/vla_sft" if student == "vla" else f"{student}/imitation"
    return candidate if candidate in rows and candidate != name else None


def comparison_pairs(
    rows: Mapping[str, tuple[str, str]],
    baselines: Mapping[str, str] | None = None,
    controls: Mapping[str, Sequence[str]] | None = None,
) -> list[Pair]:
    """The pairs to compare, in row order. `rows`: name → (student, method); `baselines`: row → its
    baseline row as the pipeline declares it (rows it leaves out fall back to `fallback_baseline`);
    `controls`: row → its control rows (each compared with the row as an extra pair)."""
    names = list(rows)
    for label, mapping in (("baselines", baselines or {}), ("controls", controls or {})):
        for row, refs in mapping.items():
            for ref in [refs] if isinstance(refs, str) else refs:
                missing = [r for r in (row, ref) if r not in rows]
                if missing:
                    raise ValueError(
                        f"comparisons: {label}[{row!r}] names rows {missing} that the run has not "
                        f"evaluated; rows: {names}"
                    )
    pairs: list[Pair] = []
    for name, (student, method) in rows.items():
        declared = (baselines or {}).get(name)
        base = declared or fallback_baseline(name, student, method, names)
        if base is not None:
            pairs.append(Pair(name, base, "baseline", "declared" if declared else "rule"))
        pairs += [Pair(name, c, "control", "declared") for c in (controls or {}).get(name, [])]
    return pairs


def metric_value(metrics: Mapping[str, Any] | None, path: Sequence[str]) -> float | None:
    """The number at `path` in a results.json / metrics.json row (None when absent or not a number)."""
    node: Any = metrics
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def bootstrap_ci(diffs: np.ndarray, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of `diffs` (n,) — `scipy.stats.bootstrap`."""
    if np.all(diffs == diffs[0]):  # every resample has the same mean; scipy warns and returns NaN
        return float(diffs[0]), float(diffs[0])
    res = stats.bootstrap(
        (diffs,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_t_pvalue(row: np.ndarray, ref: np.ndarray) -> float | None:
    """Two-sided p-value of the paired t-test (`scipy.stats.ttest_rel`) over seeds; 1 when every
    difference is 0, None when every difference is the same non-zero number (the test is undefined)."""
    diffs = row - ref
    if np.all(diffs == diffs[0]):
        return 1.0 if diffs[0] == 0 else None
    return float(stats.ttest_rel(row, ref).pvalue)


def sign_flip_pvalue(diffs: np.ndarray, seed: int = 0, n_resamples: int = N_RESAMPLES) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean(diffs) = 0
    (`scipy.stats.permutation_test`, exact when 2^n ≤ n_resamples)."""
    if np.all(diffs == 0):
        return 1.0
    res = stats.permutation_test(
        (diffs,),
        np.mean,
        permutation_type="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (controls the family-wise error rate): the k-th smallest of m is
    multiplied by (m − k + 1), then made monotone and capped at 1."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def adjust(pvalues: Sequence[float], correction: str) -> list[float]:
    """Adjusted p-values of one run's tests: "holm" or "bh" (Benjamini–Hochberg, scipy)."""
    if not pvalues:
        return []
    if correction == "holm":
        return holm(pvalues)
    if correction == "bh":
        return [float(x) for x in stats.false_discovery_control(np.asarray(pvalues), method="bh")]
    raise ValueError(f"correction {correction!r} unknown; use one of {list(CORRECTIONS)}")


def verdict(mean_difference: float, p_adjusted: float | None, lower_is_better: bool, alpha: float) -> str:
    """ "helps" / "hurts" when the corrected p-value is below `alpha` (direction from the sign of the mean
    difference row − reference and the metric's direction), else "no evidence"."""
    if p_adjusted is None or not p_adjusted < alpha or mean_difference == 0:
        return "no evidence"
    better = mean_difference < 0 if lower_is_better else mean_difference > 0
    return "helps" if better else "hurts"


def _by_seed(runs: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(r["seed"]): r for r in runs}


def compare_metric(
    metric: Metric,
    row_runs: Sequence[Mapping[str, Any]],
    ref_runs: Sequence[Mapping[str, Any]],
    seed: int = 0,
) -> dict[str, Any]:
    """One metric of one pair, uncorrected: the paired differences over common seeds (≥ 2), else over
    common scenes/episodes of the one common seed; {"verdict": "not tested", "reason": …} otherwise."""
    base = {"label": metric.label, "unit": metric.unit, "lower_is_better": metric.lower_is_better}
    rows, refs = _by_seed(row_runs), _by_seed(ref_runs)
    common = [s for s in rows if s in refs]
    values = [(s, metric_value(rows[s], metric.path), metric_value(refs[s], metric.path)) for s in common]
    measured = [(s, a, b) for s, a, b in values if a is not None and b is not None]
    if len(measured) >= 2:
        seeds = [s for s, _, _ in measured]
        row = np.array([a for _, a, _ in measured])
        ref = np.array([b for _, _, b in measured])
        diffs = row - ref
        p = paired_t_pvalue(row, ref)
        lo, hi = bootstrap_ci(diffs, seed)
        return {
            **base,
            "paired_over": "seeds",
            "n": len(seeds),
            "seeds": seeds,
            "differences": diffs.tolist(),
            "row_mean": float(row.mean()),
            "reference_mean": float(ref.mean()),
            "mean_difference": float(diffs.mean()),
            "ci95": [lo, hi],
            "test": "paired t-test over seeds (scipy.stats.ttest_rel)",
            "p_value": p,
            **(
                {"reason": "the difference is the same in every seed: the t-test is undefined"}
                if p is None
                else {}
            ),
        }
    if not measured:
        why = "no common seed" if not common else f"{metric.label} not measured (disabled in eval?)"
        return {**base, "paired_over": None, "verdict": "not tested", "reason": why}
    s = measured[0][0]
    row_scenes = rows[s].get("per_scene", {}).get(metric.key)
    ref_scenes = refs[s].get("per_scene", {}).get(metric.key)
    if not isinstance(row_scenes, Mapping) or not isinstance(ref_scenes, Mapping):
        return {
            **base,
            "paired_over": None,
            "verdict": "not tested",
            "reason": f"one common seed ({s}) and no per-{metric.unit_of_pairing} values in its eval stages "
            "(evaluated before they were recorded?): nothing to pair; run ≥ 2 seeds or re-run the eval stages",
        }
    ids = [i for i in row_scenes if i in ref_scenes]
    if len(ids) < 2:
        return {
            **base,
            "paired_over": None,
            "verdict": "not tested",
            "reason": f"one common seed ({s}) and {len(ids)} common {metric.unit_of_pairing}(s): nothing to pair",
        }
    row = np.array([float(row_scenes[i]) for i in ids])
    ref = np.array([float(ref_scenes[i]) for i in ids])
    diffs = row - ref
    lo, hi = bootstrap_ci(diffs, seed)
    return {
        **base,
        "paired_over": f"{metric.unit_of_pairing}s",
        "n": len(ids),
        "seeds": [s],
        "row_mean": float(row.mean()),
        "reference_mean": float(ref.mean()),
        "mean_difference": float(diffs.mean()),
        "ci95": [lo, hi],
        "test": f"paired sign-flip permutation test over {metric.unit_of_pairing}s (scipy.stats.permutation_test)",
        "p_value": sign_flip_pvalue(diffs, seed),
    }


def compare_rows(
    per_seed: Mapping[str, Sequence[Mapping[str, Any]]],
    rows: Mapping[str, tuple[str, str]],
    baselines: Mapping[str, str] | None = None,
    controls: Mapping[str, Sequence[str]] | None = None,
    correction: str = "holm",
    alpha: float = ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """results.json "comparisons": every pair of `comparison_pairs` × every metric of `METRICS`.

    per_seed: row → its per-seed metrics.json dicts (each with "seed" and, for the single-seed path,
    "per_scene"); rows: row → (student, method), in report order. The correction runs over every test
    of the run that produced a p-value."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r} unknown; use one of {list(CORRECTIONS)}")
    entries: list[dict[str, Any]] = []
    tests: list[tuple[dict[str, Any], float]] = []
    for pair in comparison_pairs(rows, baselines, controls):
        entry: dict[str, Any] = {
            "row": pair.row,
            "reference": pair.reference,
            "kind": pair.kind,
            "pairing": pair.source,
            "student": rows[pair.row][0],
            "metrics": {},
        }
        for metric in METRICS:
            result = compare_metric(
                metric, per_seed.get(pair.row, []), per_seed.get(pair.reference, []), seed
            )
            entry["metrics"][metric.key] = result
            if result.get("p_value") is not None:
                tests.append((result, float(result["p_value"])))
        entries.append(entry)
    for (result, _), p_adj in zip(tests, adjust([p for _, p in tests], correction)):
        result["p_adjusted"] = p_adj
    for entry in entries:
        for key, result in entry["metrics"].items():
            if result.get("verdict") == "not tested":
                continue
            lower = next(m.lower_is_better for m in METRICS if m.key == key)
            result.setdefault("p_adjusted", None)
            result["verdict"] = verdict(result["mean_difference"], result["p_adjusted"], lower, alpha)
    return {
        "confidence_level": CONFIDENCE,
        "alpha": alpha,
        "correction": {
            "holm": "holm (family-wise error rate)",
            "bh": "benjamini-hochberg (false discovery rate)",
        }[correction],
        "num_tests": len(tests),
        "interval": f"percentile bootstrap of the mean paired difference (scipy.stats.bootstrap, {N_RESAMPLES} resamples)",
        "difference": "row - reference (lower_is_better says which sign helps)",
        "pairing_rule": "seeds when the pair shares >= 2 seeds, else scenes/episodes of the one common seed",
        "rng_seed": seed,
        "pairs": entries,
    }
