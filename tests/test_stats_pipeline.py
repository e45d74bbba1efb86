"""The smoke study with two seeds fills every field the statistics add: results.json "comparisons" and
"hardware", per-scene values in each eval stage, the report section and the README block; the eval
stages of one seed give the single-seed (per-scene) comparison.

Two smoke rows only (a baseline and a recipe), 10 validation scenes, no expert row, to keep it to a few
minutes; the probe baselines of the VLA rows are tested on their own in tests/test_stats.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from drivedistill.pipeline.config import load_study
from drivedistill.pipeline.study import run_study
from drivedistill.report import main as report_main
from drivedistill.stats import METRICS, compare_rows

pytestmark = pytest.mark.slow

ROWS = ("transfuser/imitation", "transfuser/vlm_ad")
OVERRIDES = [
    "--seeds=[0,1]",
    "--eval.closedloop_episodes=2",
    "--eval.latency_repeats=2",
    "--eval.max_scenes=10",
    "--eval.expert_reference=false",
]


def test_two_seed_smoke_run_fills_every_statistics_field(tmp_path: Path) -> None:
    cfg = load_study("smoke", overrides=OVERRIDES)
    cfg.models = [m for m in cfg.models if m.name in ROWS]
    out = tmp_path / "run"
    run_study(cfg, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema"] == 2
    by_scenario = saved["models"]["transfuser/vlm_ad"]["closedloop_by_scenario"]  # 2 seeds × 2 episodes
    assert sum(c["episodes"] for c in by_scenario.values()) == 4
    hw = saved["hardware"]
    assert hw["cpu_model"] and hw["torch_threads"] >= 1 and hw["torch"] and hw["device"] == "cpu"

    comp = saved["comparisons"]
    (pair,) = comp["pairs"]  # transfuser/imitation is the baseline itself
    tested = [m for m in pair["metrics"].values() if m["p_value"] is not None]
    assert comp["correction"].startswith("holm") and comp["num_tests"] == len(tested) >= 1
    assert (pair["row"], pair["reference"], pair["pairing"]) == (
        "transfuser/vlm_ad",
        "transfuser/imitation",
        "declared",  # the recipe registry's baseline (pipeline/recipes.baseline_row), not stats' fallback
    )
    for metric in METRICS:
        m = pair["metrics"][metric.key]
        assert m["paired_over"] == "seeds" and m["seeds"] == [0, 1] and len(m["differences"]) == 2
        lo, hi = m["ci95"]
        assert lo <= m["mean_difference"] <= hi and math.isfinite(lo) and math.isfinite(hi)
        assert m["verdict"] in {"helps", "hurts", "no evidence"}
        assert m["p_value"] is None or 0.0 <= m["p_adjusted"] <= 1.0

    # one seed: the eval stages' per-scene values pair scenes and episodes
    def seed0(row: str) -> dict:
        (stage,) = (out / "stages").glob(f"eval-{row.replace('/', '_')}-s0-*")
        return dict(json.loads((stage / "metrics.json").read_text()))

    runs = {row: [seed0(row)] for row in ROWS}
    assert set(runs["transfuser/vlm_ad"][0]["per_scene"]) == {m.key for m in METRICS}
    single = compare_rows(runs, {m.name: (m.student, m.method) for m in cfg.models})
    metrics = single["pairs"][0]["metrics"]
    assert runs["transfuser/vlm_ad"][0]["num_scenes"] == 10
    for metric in METRICS[:4]:
        assert metrics[metric.key]["paired_over"] == "scenes" and metrics[metric.key]["n"] == 10
    assert metrics["closedloop/driving_score"]["paired_over"] == "episodes"
    assert metrics["closedloop/driving_score"]["n"] == 2

    page = (out / "report.html").read_text()
    assert "Does distillation help?" in page and hw["cpu_model"] in page
    readme = tmp_path / "README.md"
    readme.write_text("<!-- comparisons:begin -->\n<!-- comparisons:end -->\n")
    assert (
        report_main(
            ["--results", str(out / "results.json"), "--readme", str(readme), "--block", "comparisons"]
        )
        == 0
    )
    assert "`transfuser/vlm_ad`" in readme.read_text()
