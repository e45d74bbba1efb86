"""`drivedistill run --dry-run` of the full and curves presets: the rows it lists (controls with the row
they control for, learning-curve points with their labelled-set size), without running anything."""

from __future__ import annotations

from pathlib import Path

from drivedistill.pipeline import main
from drivedistill.pipeline.config import load_study
from drivedistill.pipeline.recipes import static_needs
from drivedistill.pipeline.study import run_study


def test_full_lists_a_control_per_recipe_and_a_teacher_per_seed(tmp_path: Path) -> None:
    cfg = load_study("full")
    assert cfg.teachers == "per_seed" and len(cfg.seeds) >= 5
    plan = run_study(cfg, tmp_path / "run", dry_run=True)
    assert plan["everything"] and not (tmp_path / "run").exists()  # a dry run writes nothing
    controls = {r["row"]: r for r in plan["rows"] if r["kind"] == "control"}
    controlled = {r["controls"] for r in controls.values()}
    assert {
        "transfuser/vlm_ad",
        "transfuser/latent_vla",
        "transfuser/latent_vla_distill",
        "vla/evodrive",
    } <= controlled
    assert all(r["controls"] in cfg.model_names() and r["baseline"] is not None for r in controls.values())
    shuffled = next(m for m in cfg.models if m.recipe_cfg.get("shuffle_annotations"))
    untrained = next(m for m in cfg.models if m.recipe_cfg.get("teacher_init") == "untrained")
    assert shuffled.controls == "transfuser/vlm_ad" and untrained.controls == "transfuser/latent_vla"
    needs = static_needs(cfg)
    assert {f"latent_teacher-s{s}" for s in cfg.seeds} <= set(needs["transfuser/latent_vla"])
    assert needs["transfuser/vlm_ad"] == ["annotate"]  # rule annotations: deterministic, made once


def test_curves_trains_baseline_and_headline_rows_at_three_sizes(capsys: object) -> None:
    cfg = load_study("curves")
    plan = run_study(cfg, Path("/nonexistent/run"), dry_run=True)
    sizes: dict[str, set[int]] = {}
    for row in plan["rows"]:
        sizes.setdefault(row["row"].rsplit("-n", 1)[0], set()).add(row["max_samples"])
        if row["baseline"] is not None:  # compared with the baseline at the same size
            assert row["baseline"].endswith(f"-n{row['max_samples']}")
    assert len(sizes) >= 5 and all(len(s) >= 3 for s in sizes.values())
    assert cfg.teachers == "once"  # the teacher is fixed along a curve
    assert main(["--preset", "curves", "--dry-run", "--out", "/nonexistent/run"]) == 0
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "vla/evodrive-n8000" in printed and "max_samples 8000" in printed
