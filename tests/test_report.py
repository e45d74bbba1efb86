"""The report renders offline in headless Chromium: every image decodes, nothing is blank."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivedistill.report import ReportAssets, markdown_table, table_rows, update_readme, write_report
from drivedistill.report_comparisons import comparisons_markdown, comparisons_table, forest_plot
from drivedistill.report_curves import curve_groups, curves_markdown, learning_curves_chart
from drivedistill.stats import compare_rows

from .browser import render


def _results() -> dict:
    def model(l2: float, pdms: float) -> dict:
        block = {
            "l2": {"1s": l2 / 2, "2s": l2, "3s": 1.5 * l2, "avg": l2},
            "collision": {"1s": 0.0, "2s": 0.1, "3s": 0.2, "avg": 0.1},
        }
        return {
            "student": "transfuser",
            "method": "imitation",
            "params_m": 1.2,
            "seeds": [0, 1],
            "openloop": {"stp3": block, "uniad": block},
            "pdms": {"pdms": pdms, "nc": 1.0, "dac": 0.9, "ddc": 1.0, "ttc": 0.9, "ep": 0.8, "c": 1.0},
            "closedloop": {
                "collision_rate": 0.1,
                "offroad_rate": 0.0,
                "progress_m": 120.0,
                "driving_score": 0.7,
            },
            "latency_ms": {"p50": 5.0, "p90": 7.0},
            "std": {"openloop": {"stp3": {"l2": {"avg": 0.05}}}, "pdms": {"pdms": 0.01}},
        }

    return {
        "schema": 2,
        "preset": "test",
        "seeds": [0, 1],
        "config_hash": "abc",
        "versions": {"torch": "x"},
        "models": {"transfuser/imitation": model(0.9, 0.8), "transfuser/vlm_ad": model(0.8, 0.82)},
        "config": {"a": 1},
        "hardware": {
            "cpu_model": "AMD EPYC",
            "logical_cpus": 2,
            "torch_threads": 2,
            "torch_cpu_capability": "AVX2",
            "torch": "2.x",
            "device": "cpu",
        },
        "comparisons": _comparisons(),
    }


def _comparisons() -> dict:
    """Real comparisons (drivedistill.stats) of three pairs over five seeds: one clear gain in L2, one
    clear loss in PDMS, one row identical to its baseline; the driving score is left unmeasured."""
    rng = np.random.default_rng(0)

    def run(seed: int, l2: float, pdms: float) -> dict:
        block = {"l2": {"avg": l2}, "collision": {"avg": 0.5 * l2}}
        return {"seed": seed, "openloop": {"stp3": block, "uniad": block}, "pdms": {"pdms": pdms}}

    base = [(1.0 + rng.normal(0, 0.05), 0.7 + rng.normal(0, 0.01)) for _ in range(5)]
    per_seed = {
        "transfuser/imitation": [run(s, *b) for s, b in enumerate(base)],
        "transfuser/vlm_ad": [
            run(s, b[0] - 0.2 + 0.01 * s, b[1] - 0.05 + 0.002 * s) for s, b in enumerate(base)
        ],
        "transfuser/latent_vla": [run(s, *b) for s, b in enumerate(base)],
        "vla/vla_sft": [run(s, 2.0, 0.5) for s in range(5)],
        "vla/evodrive": [run(s, 2.0 + 0.1 * rng.normal(), 0.5 + 0.02 * rng.normal()) for s in range(5)],
    }
    rows = {n: (n.split("/")[0], n.split("/")[1]) for n in per_seed}
    return compare_rows(per_seed, rows)


def test_tables_name_protocols() -> None:
    tables = table_rows(_results())
    headers = [h for hs, _ in tables.values() for h in hs]
    assert any("(ST-P3)" in h for h in headers) and any("(UniAD)" in h for h in headers)
    assert any("NAVSIM v1.1" in h for h in headers)
    assert "0.90 ± 0.05" in markdown_table(_results())


def test_closed_loop_episodes_are_counted_per_scenario_and_tabled() -> None:
    from drivedistill.metrics.closedloop import episodes_by_scenario

    records = [  # two seeds of two episodes: the roundabout leaves the road once, the highway crashes twice
        {"scenario": "roundabout", "offroad": True, "collided": False},
        {"scenario": "highway", "offroad": False, "collided": True},
        {"scenario": "roundabout", "offroad": False, "collided": False},
        {"scenario": "highway", "offroad": False, "collided": True},
    ]
    counts = episodes_by_scenario(records)
    assert counts == {
        "highway": {"episodes": 2, "offroad": 0, "collided": 2},
        "roundabout": {"episodes": 2, "offroad": 1, "collided": 0},
    }
    results = _results()
    results["models"]["transfuser/vlm_ad"]["closedloop_by_scenario"] = counts
    headers, rows = table_rows(results)[
        "Closed loop per scenario — episodes off the road / collided (all seeds)"
    ]
    assert headers[1:] == [
        "highway: off-road / collided of episodes",
        "roundabout: off-road / collided of episodes",
    ]
    assert rows == [["transfuser/imitation", "–", "–"], ["transfuser/vlm_ad", "0 / 2 of 2", "1 / 0 of 2"]]
    assert not any("per scenario" in t for t in table_rows(_results()))  # no episode records: no table


def test_readme_update_requires_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nend\n")
    update_readme(readme, _results())
    text = readme.read_text()
    assert "old" not in text and "`transfuser/vlm_ad`" in text and text.endswith("end\n")


def test_markdown_table_selects_rows_by_pattern_and_shows_vla_columns() -> None:
    results = _results()
    results["models"]["vla/evodrive"] = {
        **results["models"]["transfuser/imitation"],
        "parse_failures": {"count": 1.5, "decoded": 180.0},
        "perception_probe": {"iou": 0.184},
    }
    table = markdown_table(results, models=["vla/*", "transfuser/imitation"], vla_columns=True)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["vla/evodrive", "transfuser/imitation"]  # pattern order
    assert "probe IoU" in table and "latency" not in table
    assert "| 1.5 | 180 | 0.184 | – |" in rows[0] and rows[1].endswith("| – | – | – | – |")
    with pytest.raises(ValueError, match="no model in results matches"):
        markdown_table(results, models=["ipad/*"])


def test_report_opens_in_chromium(tmp_path: Path) -> None:
    png = tmp_path / "panel.png"
    Image.fromarray((np.random.default_rng(0).random((60, 120, 3)) * 255).astype(np.uint8)).save(png)
    gif = tmp_path / "ep.gif"
    frames = [Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    assets = ReportAssets(
        scene_panels=[("scene", png)], curves={"m": [(0, 2.0), (10, 1.0)]}, gif=gif, gif_caption="ep"
    )
    page = write_report(tmp_path, _results(), assets)
    loaded, total = render(page, tmp_path / "shot.png")
    assert total >= 7 and loaded == total
    text = page.read_text()
    assert "Does distillation help?" in text and "forest plot" in text and "AMD EPYC" in text
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=np.float32)
    assert shot.std() > 5.0, "screenshot is blank"
    json.dumps(_results())


def test_comparisons_table_names_verdicts_and_untested_cells() -> None:
    headers, rows, notes = comparisons_table(_results())
    assert headers[3] == "Δ L2 avg (ST-P3) (lower is better)" and "PDMS" in headers[6]
    by_row = {r[0]: r for r in rows}
    assert by_row["transfuser/vlm_ad"][3].endswith("helps") and by_row["transfuser/vlm_ad"][6].endswith(
        "hurts"
    )
    assert by_row["transfuser/latent_vla"][3].startswith("+0.000 [+0.000, +0.000] p=1 no evidence")
    assert by_row["vla/evodrive"][1] == "vla/vla_sft (baseline)" and by_row["vla/evodrive"][7] == "not tested"
    assert any("driving score" in n and "not measured" in n for n in notes)


def test_readme_comparisons_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- comparisons:begin -->\n<!-- comparisons:end -->\n<!-- results:begin -->\nx\n<!-- results:end -->\n"
    )
    update_readme(readme, _results(), block="comparisons", models=["transfuser/*"])
    text = readme.read_text()
    assert "| `transfuser/vlm_ad` | `transfuser/imitation (baseline)` | seeds |" in text
    assert "**helps**" in text and "vla/evodrive" not in text and "\nx\n" in text  # the other block kept
    assert "holm" in text and "AMD EPYC, 2 logical CPUs, 2 torch threads" in text
    with pytest.raises(ValueError, match="no compared row"):
        comparisons_markdown(_results(), ["ipad/*"])
    old = {k: v for k, v in _results().items() if k != "comparisons"}
    with pytest.raises(ValueError, match="schema < 2"):
        comparisons_markdown(old)
    named = tmp_path / "NAMED.md"  # a second run's block: NAME-comparisons gets the same kind of table
    named.write_text("<!-- seeds3-comparisons:begin -->\n<!-- seeds3-comparisons:end -->\n")
    update_readme(named, _results(), block="seeds3-comparisons", models=["transfuser/*"])
    assert "| `transfuser/vlm_ad` | `transfuser/imitation (baseline)` | seeds |" in named.read_text()


def test_forest_plot_renders_one_panel_per_metric(tmp_path: Path) -> None:
    png = forest_plot(_results())
    assert png is not None
    (tmp_path / "forest.png").write_bytes(png)
    img = np.asarray(Image.open(tmp_path / "forest.png").convert("RGB"))
    assert img.shape[1] > 5 * 250  # five metric panels side by side
    green = ((img[..., 1] > 140) & (img[..., 0] < 80) & (img[..., 2] < 90)).sum()
    red = ((img[..., 0] > 170) & (img[..., 1] < 90) & (img[..., 2] < 80)).sum()
    assert green > 20 and red > 20  # the "helps" and "hurts" intervals are drawn in their colours


def test_teacher_gates_and_event_families_render_for_the_readme_and_report() -> None:
    from drivedistill.report_gates import event_rows, gates_html, markdown, teacher_rows

    results = {
        "teacher_quality": {
            "evodrive": {
                "pass": False,
                "checks": {"probe_beats_random_init": True},
                "metrics": {"probe_iou_pretrained": 0.2},
                "vs_students": {
                    "pass": False,
                    "checks": {"oracle_l2": False},
                    "metrics": {"oracle_l2_m": 1.5},
                },
            },
            "vlm_ad": {
                "pass": True,
                "checks": {"few_failed": True},
                "metrics": {"annotated": 90, "annotation_quality": {"label_accuracy": 0.7, "per": {"a": 1}}},
            },
        },
        "models": {
            "expert/privileged": {
                "per_event": {
                    "families": {"cut_in": {"l2_m": 0.0, "pdms": 0.9, "num_samples": 4.0}},
                    "expert_departs_cv": {"threshold_m": 2.0, "rates": {"cut_in": 0.75}},
                }
            },
            "transfuser/imitation": {"per_event": {"families": {"cut_in": {"l2_m": 2.5, "pdms": 0.4}}}},
            "constant_velocity/none": {},
        },
    }
    headers, rows = teacher_rows(results)
    assert [r[:2] for r in rows] == [["evodrive", "FAIL"], ["vlm_ad", "pass"]]
    assert rows[0][3] == "vs students: oracle_l2" and "oracle_l2_m 1.500" in rows[0][4]
    assert "annotated 90" in rows[1][4]
    # a nested block's scalars are shown one level down (the annotations' accuracy), deeper ones are not
    assert "annotation_quality.label_accuracy 0.700" in rows[1][4] and "per" not in rows[1][4]
    headers, rows = event_rows(results)
    assert headers == ["row", "cut_in: L2 [m] / PDMS"]
    assert rows[0][1] == "0.75 · 4" and rows[2] == ["`transfuser/imitation`", "2.50 / 0.400"]
    assert len(rows) == 3  # a row without per-event values is left out
    assert markdown(headers, rows).count("\n") == len(rows) + 1
    html_parts = gates_html(results)
    assert len(html_parts) == 2 and "FAIL" in html_parts[0] and "cut_in" in html_parts[1]
    assert event_rows({"models": {}}) == ([], [])


def _curve_results() -> dict:
    """Two curves over 250 / 850 / 3,400 labels, three seeds: imitation improving with labels, VLM-AD
    1.0 m better than its baseline at 250 labels and equal at 3,400 (real paired comparisons)."""
    sizes, seeds = (250, 850, 3400), range(3)

    def run(seed: int, l2: float) -> dict:
        block = {"l2": {"avg": l2}, "collision": {"avg": 0.1}}
        return {"seed": seed, "openloop": {"stp3": block, "uniad": block}, "pdms": {"pdms": 1.0 - l2 / 4}}

    per_seed, rows, baselines, models = {}, {}, {}, {}
    for n in sizes:
        base = 2.0 / np.log10(n)
        gain = {250: 1.0, 850: 0.3, 3400: 0.0}[n]
        for method, l2 in (("imitation", base), ("vlm_ad", base - gain)):
            name = f"transfuser/{method}-n{n}"
            per_seed[name] = [run(s, l2 + 0.01 * s) for s in seeds]
            rows[name] = ("transfuser", method)
            models[name] = {
                "student": "transfuser",
                "method": method,
                "max_samples": n,
                "openloop": {"stp3": {"l2": {"avg": l2 + 0.01}}},
                "pdms": {"pdms": 1.0 - (l2 + 0.01) / 4},
                "std": {"openloop": {"stp3": {"l2": {"avg": 0.01}}}},
            }
        baselines[f"transfuser/vlm_ad-n{n}"] = f"transfuser/imitation-n{n}"
    models["transfuser/imitation"] = {"student": "transfuser", "method": "imitation"}  # no max_samples
    models["ego_mlp/imitation-n850"] = {**models["transfuser/imitation-n850"], "student": "ego_mlp"}
    return {"models": models, "comparisons": compare_rows(per_seed, rows, baselines=baselines)}


def test_learning_curves_group_by_name_and_plot_the_paired_differences(tmp_path: Path) -> None:
    results = _curve_results()
    groups = curve_groups(results)  # a one-size "curve" and rows without max_samples are left out
    assert groups == {
        "transfuser/imitation": [
            (250, "transfuser/imitation-n250"),
            (850, "transfuser/imitation-n850"),
            (3400, "transfuser/imitation-n3400"),
        ],
        "transfuser/vlm_ad": [
            (250, "transfuser/vlm_ad-n250"),
            (850, "transfuser/vlm_ad-n850"),
            (3400, "transfuser/vlm_ad-n3400"),
        ],
    }
    table = curves_markdown(results)
    vlm = next(line for line in table.splitlines() if line.startswith("| `transfuser/vlm_ad`"))
    imitation = next(line for line in table.splitlines() if line.startswith("| `transfuser/imitation`"))
    assert "Δ -1.000" in vlm and "Δ +0.000" in vlm and "Δ" not in imitation
    assert "L2 avg (ST-P3) @ 250 labels" in table.splitlines()[0]
    png = learning_curves_chart(results)
    assert png is not None
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 1000 and img.std() > 10
    assert learning_curves_chart(_results()) is None  # no curve rows, no section
    page = write_report(
        tmp_path, {**_results(), "models": {**_results()["models"], **results["models"]}}, ReportAssets()
    )
    assert "Learning curves" in page.read_text()
    assert "Learning curves" not in write_report(tmp_path / "plain", _results(), ReportAssets()).read_text()
