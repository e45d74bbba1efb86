"""Paired comparisons (drivedistill.stats): intervals and p-values against scipy and hand-computed
values, the verdict's direction, the pairing rule, and the per-scene path of a single-seed run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from drivedistill import stats
from drivedistill.pipeline.evaluation import per_scene_values
from drivedistill.stats import METRICS, compare_metric, compare_rows, comparison_pairs

L2 = METRICS[0]  # openloop/stp3/l2_avg_m, lower is better
PDMS = next(m for m in METRICS if m.key == "pdms/navsim-v1.1")


def _run(seed: int, l2: float, pdms: float, per_scene: dict | None = None) -> dict:
    block = {"l2": {"avg": l2}, "collision": {"avg": 0.0}}
    run = {"seed": seed, "openloop": {"stp3": block, "uniad": block}, "pdms": {"pdms": pdms}}
    return run if per_scene is None else {**run, "per_scene": per_scene}


def test_paired_t_against_scipy_and_by_hand() -> None:
    row, ref = np.array([1.0, 2.5, 3.0, 0.5]), np.array([0.5, 1.0, 2.0, 1.0])
    assert stats.paired_t_pvalue(row, ref) == pytest.approx(sps.ttest_rel(row, ref).pvalue, rel=1e-12)
    # differences 1, 2, 3: t = 2 / (1 / √3) with 2 dof, whose CDF is 1/2 + t / (2 √(t² + 2))
    t = 2 * math.sqrt(3)
    assert stats.paired_t_pvalue(np.array([1.0, 2, 3]), np.zeros(3)) == pytest.approx(
        1 - t / math.sqrt(t * t + 2)
    )
    assert stats.paired_t_pvalue(np.ones(3), np.ones(3)) == 1.0  # identical rows: no difference at all
    assert stats.paired_t_pvalue(np.ones(3) + 1, np.ones(3)) is None  # constant non-zero: undefined


def test_sign_flip_and_bootstrap_by_hand_and_against_scipy() -> None:
    # 2³ = 8 sign patterns of (1, 2, 3): only all-plus and all-minus reach |mean| ≥ 2 → p = 2/8 (exact)
    assert stats.sign_flip_pvalue(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.25)
    assert stats.sign_flip_pvalue(np.zeros(5)) == 1.0
    # two seeds (0, 1): resampled means 0, ½, 1 with probabilities ¼, ½, ¼ → the 95 % interval is [0, 1]
    assert stats.bootstrap_ci(np.array([0.0, 1.0])) == (0.0, 1.0)
    assert stats.bootstrap_ci(np.full(4, 0.3)) == (0.3, 0.3)
    diffs = np.random.default_rng(3).normal(0.2, 1.0, 40)
    ref = sps.bootstrap(
        (diffs,), np.mean, n_resamples=9999, method="percentile", rng=np.random.default_rng(0)
    )
    assert stats.bootstrap_ci(diffs) == (ref.confidence_interval.low, ref.confidence_interval.high)


def test_corrections_by_hand_and_against_scipy() -> None:
    p = [0.01, 0.04, 0.03]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01; max(2·0.03, 1·0.04) twice
    assert stats.adjust(p, "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert stats.adjust(p, "bh") == pytest.approx(sps.false_discovery_control(p, method="bh").tolist())
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped
    with pytest.raises(ValueError, match="holm"):
        stats.adjust(p, "bonferroni")


def test_seed_pairing_matches_scipy_and_respects_direction() -> None:
    rng = np.random.default_rng(0)
    base_l2, base_pdms = rng.normal(1.0, 0.1, 5), rng.normal(0.7, 0.05, 5)
    ref = [_run(s, base_l2[s], base_pdms[s]) for s in range(5)]
    better = [_run(s, base_l2[s] - 0.3 + 0.01 * s, base_pdms[s] - 0.1 - 0.01 * s) for s in range(5)]
    m = compare_metric(L2, better, ref)
    row_l2 = np.array([r["openloop"]["stp3"]["l2"]["avg"] for r in better])
    assert m["paired_over"] == "seeds" and m["n"] == 5
    assert m["p_value"] == pytest.approx(sps.ttest_rel(row_l2, base_l2).pvalue)
    assert m["mean_difference"] == pytest.approx(float(np.mean(row_l2 - base_l2)))
    assert m["ci95"][1] < 0
    rows = {
        "transfuser/imitation": ("transfuser", "imitation"),
        "transfuser/vlm_ad": ("transfuser", "vlm_ad"),
    }
    out = compare_rows({"transfuser/imitation": ref, "transfuser/vlm_ad": better}, rows)
    (pair,) = out["pairs"]
    assert pair["reference"] == "transfuser/imitation" and pair["pairing"] == "rule"
    assert pair["metrics"][L2.key]["verdict"] == "helps"  # lower L2
    assert pair["metrics"][PDMS.key]["verdict"] == "hurts"  # lower PDMS
    assert pair["metrics"]["closedloop/driving_score"]["verdict"] == "not tested"  # not measured
    assert out["num_tests"] == 4 and out["correction"].startswith("holm")
    assert all(m["p_adjusted"] >= m["p_value"] for m in pair["metrics"].values() if "p_value" in m)


@pytest.mark.parametrize("seeds", [[0, 1], [0, 1, 2, 3, 4], [7]])
def test_row_identical_to_its_baseline_has_no_effect(seeds: list[int]) -> None:
    rng = np.random.default_rng(1)
    scenes = {k.key: {f"s{i}": float(v) for i, v in enumerate(rng.random(30))} for k in METRICS}
    runs = [_run(s, 1.0 + 0.1 * s, 0.6 + 0.01 * s, scenes) for s in seeds]
    rows = {"vla/vla_sft": ("vla", "vla_sft"), "vla/evodrive": ("vla", "evodrive")}
    (pair,) = compare_rows({"vla/vla_sft": runs, "vla/evodrive": [dict(r) for r in runs]}, rows)["pairs"]
    assert pair["reference"] == "vla/vla_sft"
    for m in pair["metrics"].values():
        if m["verdict"] == "not tested":
            continue
        assert m["ci95"][0] <= 0.0 <= m["ci95"][1] and m["verdict"] == "no evidence"
        assert m["paired_over"] == ("seeds" if len(seeds) > 1 else "scenes")


def test_noise_alone_is_not_called_an_effect() -> None:
    """20 pure-noise rows × 2 metrics: after Holm, no verdict other than "no evidence"."""
    rng = np.random.default_rng(5)
    per_seed = {"ego_mlp/imitation": [_run(s, 1.0 + rng.normal(0, 0.1), 0.7) for s in range(3)]}
    rows = {"ego_mlp/imitation": ("ego_mlp", "imitation")}
    for k in range(20):
        per_seed[f"ego_mlp/x{k}"] = [
            _run(s, 1.0 + rng.normal(0, 0.1), 0.7 + rng.normal(0, 0.02)) for s in range(3)
        ]
        rows[f"ego_mlp/x{k}"] = ("ego_mlp", f"x{k}")
    out = compare_rows(per_seed, rows)
    verdicts = {m["verdict"] for p in out["pairs"] for m in p["metrics"].values()}
    assert verdicts <= {"no evidence", "not tested"} and out["num_tests"] == 20 * 4


def test_single_seed_pairs_scenes_and_says_when_it_cannot() -> None:
    rng = np.random.default_rng(2)
    ids = [f"tok{i}" for i in range(60)]
    ref_l2 = rng.gamma(2.0, 0.5, 60)
    ref = _run(0, float(ref_l2.mean()), 0.5, {L2.key: dict(zip(ids, ref_l2.tolist()))})
    row_l2 = ref_l2 - 0.2 + rng.normal(0, 0.05, 60)
    row = _run(0, float(row_l2.mean()), 0.5, {L2.key: dict(zip(ids[::-1], row_l2[::-1].tolist()))})  # order
    m = compare_metric(L2, [row], [ref])
    assert m["paired_over"] == "scenes" and m["n"] == 60 and m["seeds"] == [0]
    assert m["mean_difference"] == pytest.approx(float((row_l2 - ref_l2).mean()))
    assert m["ci95"][1] < 0 and m["p_value"] < 1e-3 and "permutation" in m["test"]
    missing = compare_metric(PDMS, [row], [ref])  # one seed, no per-scene PDMS values
    assert missing["verdict"] == "not tested" and "per-scene values" in missing["reason"]
    assert "mean_difference" not in missing
    other_seed = compare_metric(L2, [row], [{**ref, "seed": 1}])
    assert other_seed["verdict"] == "not tested" and other_seed["reason"] == "no common seed"


def test_pairing_rule_and_declared_pairs() -> None:
    rows = {
        "constant_velocity/none": ("constant_velocity", "none"),
        "transfuser/imitation": ("transfuser", "imitation"),
        "transfuser/vlm_ad": ("transfuser", "vlm_ad"),
        "transfuser/vlm_ad-kd0": ("transfuser", "vlm_ad"),
        "ipad/ipad_kd": ("ipad", "ipad_kd"),  # no ipad/imitation row: not compared
        "vla/vla_sft": ("vla", "vla_sft"),
        "vla/evodrive": ("vla", "evodrive"),
    }
    pairs = comparison_pairs(rows)
    assert [(p.row, p.reference) for p in pairs] == [
        ("transfuser/vlm_ad", "transfuser/imitation"),
        ("transfuser/vlm_ad-kd0", "transfuser/imitation"),
        ("vla/evodrive", "vla/vla_sft"),
    ]
    declared = comparison_pairs(
        rows,
        baselines={"vla/evodrive": "transfuser/imitation"},
        controls={"transfuser/vlm_ad": ["transfuser/vlm_ad-kd0"]},
    )
    assert ("vla/evodrive", "transfuser/imitation", "baseline", "declared") in [
        (p.row, p.reference, p.kind, p.source) for p in declared
    ]
    assert ("transfuser/vlm_ad", "transfuser/vlm_ad-kd0", "control") in [
        (p.row, p.reference, p.kind) for p in declared
    ]
    with pytest.raises(ValueError, match="vla/nothing"):
        comparison_pairs(rows, baselines={"vla/evodrive": "vla/nothing"})


def test_per_scene_open_loop_values_average_to_the_row_figure() -> None:
    from drivedistill.metrics.openloop import evaluate_openloop_scenes
    from drivedistill.testing import random_scene

    scenes = [random_scene(seed=i, num_agents=6) for i in range(12)]
    rng = np.random.default_rng(0)
    plans = np.stack([s.privileged.future_trajectory for s in scenes]).astype(np.float64)
    plans[:, :, :2] += rng.normal(0, 1.5, plans[:, :, :2].shape)
    plans[::3, :, 0] *= 2.5  # some plans run into the agents ahead
    ol = evaluate_openloop_scenes(plans, scenes, occupancy_classes="vehicles+pedestrians")
    res = {
        "openloop": ol,
        "plans": plans,
        "pdms": {"scenes": {s.token: {"pdms": 0.1 * i} for i, s in enumerate(scenes)}},
        "closed_loop": {"episodes": [{"index": 0, "scenario": "highway", "driving_score": 0.4}]},
    }
    per = per_scene_values(res, scenes, "vehicles+pedestrians")
    for key, proto, block in (
        ("openloop/stp3/l2_avg_m", "stp3", "l2"),
        ("openloop/uniad/l2_avg_m", "uniad", "l2"),
        ("openloop/stp3/collision_avg_pct", "stp3", "collision"),
    ):
        assert list(per[key]) == [s.token for s in scenes]
        assert np.mean(list(per[key].values())) == pytest.approx(ol[proto][block]["avg"], abs=1e-9)
    assert ol["stp3"]["collision"]["avg"] > 0  # the collision values were exercised
    assert per["pdms/navsim-v1.1"][scenes[3].token] == pytest.approx(0.3)
    assert per["closedloop/driving_score"] == {"episode0-highway": 0.4}
    assert set(per) == {m.key for m in METRICS}


def test_probe_baselines_by_hand() -> None:
    """The trivial predictors of the perception probe on the same grid and scenes, checked by hand."""
    from drivedistill.models.perception import PerceptionConfig, occupancy_grid, probe_baselines
    from drivedistill.testing import random_scene

    train = [random_scene(seed=i, num_agents=5) for i in range(20)]
    val = [random_scene(seed=100 + i, num_agents=5) for i in range(10)]
    pcfg = PerceptionConfig()
    out = probe_baselines(train, val, pcfg)

    def grid(scenes: list) -> np.ndarray:
        return (
            np.stack(
                [occupancy_grid(s.privileged.agents[0], s.privileged.agents_valid[0], pcfg) for s in scenes]
            )
            > 0.5
        )

    ys, yv = grid(train), grid(val)
    assert yv.any() and out["all_empty"]["iou"] == 0.0
    assert out["all_empty"]["accuracy"] == pytest.approx(1 - yv.mean())
    prior = np.broadcast_to(ys.mean(0) > 0.5, yv.shape)
    assert out["cell_prior"]["iou"] == pytest.approx((prior & yv).sum() / max((prior | yv).sum(), 1))
    t = out["cell_prior_best_threshold"]["threshold"]
    best = np.broadcast_to(ys.mean(0) >= t, ys.shape)
    assert 0 < t <= 1 and (best & ys).sum() / (best | ys).sum() >= (prior[:1] & ys).sum() / max(
        (prior[:1] | ys).sum(), 1
    )
    assert set(out) == {"all_empty", "cell_prior", "cell_prior_best_threshold"}
