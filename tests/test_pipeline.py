"""`drivedistill run --preset smoke`: the whole study end to end on the CPU, then its caching.

One slow test: a first run in two one-thread workers (every recipe), a second run that skips every stage,
and a changed knob that re-runs only the stages depending on it (both in one process). The report is opened in headless Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivedistill.pipeline import study
from drivedistill.pipeline.config import load_study
from drivedistill.pipeline.jobs import run_parallel
from drivedistill.pipeline.study import run_study

from .browser import render

pytestmark = pytest.mark.slow


def test_smoke_study_end_to_end_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    cfg = load_study("smoke")
    results = run_parallel(cfg, out, jobs=2)  # two one-thread workers; the later runs are one process

    # results.json: the documented shape, every model, every benchmark with its protocol
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema"] == 2 and saved["preset"] == "smoke" and saved["seeds"] == [0]
    references = {"expert/privileged", "oracle/privileged", "latent_teacher/codes"}
    assert set(saved["models"]) == {*references, *cfg.model_names()}
    assert next(iter(saved["models"])) == "expert/privileged" and set(list(saved["models"])[:3]) == references
    latent = saved["models"].pop("latent_teacher/codes")  # LatentVLA's teacher codes, decoded by its LAM
    assert latent["openloop"]["stp3"]["l2"]["avg"] > 0.0 and "closedloop" not in latent
    expert = saved["models"].pop("expert/privileged")  # the reference row: the expert's own plan
    assert expert["openloop"]["stp3"]["l2"]["avg"] == 0.0 and expert["closedloop"]["route_completion"] == 1.0
    oracle = saved["models"].pop("oracle/privileged")  # EvoDriveVLA's teacher alone: open loop + PDMS
    assert oracle["parse_failures"]["decoded"] > 0 and oracle["params_m"] > 0
    assert 0.0 <= oracle["pdms"]["pdms"] <= 1.0 and oracle["openloop"]["stp3"]["l2"]["avg"] > 0.0
    assert "closedloop" not in oracle  # the future frames do not exist while driving
    for name, m in saved["models"].items():
        assert m["student"] == name.split("/")[0]
        for proto in ("stp3", "uniad"):
            assert set(m["openloop"][proto]["l2"]) == {"1s", "2s", "3s", "avg"}
        assert set(m["pdms"]) >= {"pdms", "nc", "dac", "ddc", "ttc", "ep", "c"}
        assert 0.0 <= m["pdms"]["pdms"] <= 1.0
        assert set(m["closedloop"]) >= {"collision_rate", "offroad_rate", "progress_m", "driving_score"}
        assert m["latency_ms"]["p50"] > 0 and "std" in m  # measured after the jobs, alone
        assert m["protocols"]["pdms"] == "navsim-v1.1"
    assert saved["models"]["vla/vla_sft"]["parse_failures"]["decoded"] > 0  # counted, never dropped
    ran_first = set(results["stage_seconds"]) - {"total"}  # the jobs' stages and this process's
    logs = {n.replace("/", "_") + ".log" for n in cfg.model_names()}  # one per model, each ran in a worker
    assert {p.name for p in (out / "logs").iterdir()} == logs
    assert {
        "collect",
        "annotate",
        "latent_lam",
        "latent_teacher",
        "evodrive_perception",
        "evodrive_oracle",
    } <= ran_first

    # the report opens offline: every image decodes and the page is not blank
    loaded, total = render(out / "report.html", tmp_path / "shot.png")
    assert total >= 8 and loaded == total
    assert np.asarray(Image.open(tmp_path / "shot.png").convert("L"), np.float32).std() > 5.0

    # a second run skips every stage, and reads no recipe's extras (only a train stage that runs does)
    extras_read: list[list[str]] = []

    def spy(paths: list[Path]) -> object:
        extras_read.append([p.parent.name for p in paths])
        return read_extras(paths)

    read_extras = study.read_extras
    monkeypatch.setattr(study, "read_extras", spy)
    again = run_study(cfg, out)
    assert extras_read == []
    assert set(again["stage_seconds"]) == {"total"}
    # ... and still reports what every stage cost when it ran (the run's compute time)
    assert again["compute_seconds"] == results["compute_seconds"]
    assert set(again["compute_seconds"]) == set(results["stage_seconds"])

    # one knob of one method re-runs only that model's training and evaluation
    changed = load_study("smoke", overrides=["--methods.vlm_ad.align_weight=0.5"])
    plan = run_study(changed, out, dry_run=True)  # --dry-run says so before anything runs
    assert set(plan["planned"]) == {"train-transfuser_vlm_ad-s0", "eval-transfuser_vlm_ad-s0"}
    assert all(seconds is not None for seconds in plan["planned"].values())  # estimated from this run
    third = run_study(changed, out)
    assert set(third["stage_seconds"]) - {"total"} == {
        "train-transfuser_vlm_ad-s0",
        "eval-transfuser_vlm_ad-s0",
    }
    assert len(extras_read) == 1 and extras_read[0][0].startswith("annotate")  # VLM-AD's, once

    # a run directory can be moved: stages name their outputs relative to themselves
    moved = tmp_path / "moved"
    out.rename(moved)
    assert set(run_study(changed, moved)["stage_seconds"]) == {"total"}


SEEDED_ROWS = (
    "--models=[{student: transfuser, method: imitation}, {student: transfuser, method: latent_vla_distill}, "
    "{name: transfuser/latent_vla_distill-w0, student: transfuser, method: latent_vla_distill, "
    "method_cfg: {kd_weight: 0.0}, controls: transfuser/latent_vla_distill}, "
    "{name: transfuser/imitation-n40, student: transfuser, method: imitation, max_samples: 40}]"
)


def test_smoke_with_two_seeds_and_a_teacher_per_seed_fills_every_new_field(tmp_path: Path) -> None:
    """Two seeds, `teachers: per_seed`: the latent-action model and teacher run once per seed, seed k
    of a distilled row reads teacher k; results.json says so and fills the pairing, the labelled-set
    size, the teacher gates and the hardware stamps."""
    cfg = load_study(
        "smoke",
        overrides=[
            "--seeds=[0,1]",
            "--teachers=per_seed",
            SEEDED_ROWS,
            "--recipes.latent_vla.lam_train.max_steps=2",  # the fields, not the teachers, are tested
            "--recipes.latent_vla.teacher_train.max_steps=2",
            "--train.max_steps=2",
            "--eval.closedloop_episodes=0",
            "--eval.latency_repeats=2",
            "--eval.max_scenes=8",
            "--eval.expert_reference=false",
        ],
    )
    out = tmp_path / "run"
    plan = run_study(cfg, out, dry_run=True)
    assert plan["everything"]  # nothing collected yet: every stage would run
    results = run_study(cfg, out)
    assert results["teachers"] == "per_seed" and results["seeds"] == [0, 1]
    assert {"cpu_model", "torch_threads", "torch", "device"} <= set(results["hardware"])
    ran = set(results["stage_seconds"])
    assert {"latent_lam-s0", "latent_lam-s1", "latent_teacher-s0", "latent_teacher-s1"} <= ran
    assert set(results["stage_hardware"]) >= ran - {"total"}
    assert set(results["teacher_quality"]) == {"latent_vla-s0", "latent_vla-s1"}
    for gate in results["teacher_quality"].values():
        assert isinstance(gate["pass"], bool) and gate["metrics"]["teacher_action_acc_val"] is not None
        assert {"teacher_beats_image_free", "teacher_reads_image"} <= set(gate["checks"])
        assert "teacher_codes_l2_below_best_student" in gate["vs_students"]["checks"]
    assert results["models"]["latent_teacher/codes"]["seeds"] == [0, 1]  # one eval per teacher seed
    rows = results["models"]
    distilled, control = rows["transfuser/latent_vla_distill"], rows["transfuser/latent_vla_distill-w0"]
    assert distilled["seeds"] == [0, 1] and distilled["teachers"] == "per_seed"
    assert distilled["baseline"] == control["baseline"] == "transfuser/imitation"
    assert control["controls"] == "transfuser/latent_vla_distill" and distilled["controls"] is None
    assert (
        rows["transfuser/imitation-n40"]["max_samples"] == 40
        and rows["transfuser/imitation"]["max_samples"] is None
    )
    # seed k's train stage read teacher k: its inputs are the seed's own teacher stage keys
    stages = out / "stages"
    for seed in (0, 1):
        teacher = next(stages.glob(f"latent_teacher-s{seed}-*"))
        train = next(stages.glob(f"train-transfuser_latent_vla_distill-s{seed}-*"))
        inputs = json.loads((train / "_done.json").read_text())["inputs"]
        assert teacher.name.rsplit("-", 1)[1] in inputs
    labelled = next(stages.glob("train-transfuser_imitation-n40-s0-*"))
    assert json.loads((labelled / "_done.json").read_text())["summary"]["train_samples"] == 40
