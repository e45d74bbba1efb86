"""The recipes' teacher gates are wired: LatentVLA's stages train on store + corpus and compute the
latent-teacher gate, declare the "latent_teacher/codes" reference row and compare it with the students;
VLM-AD's annotate stage measures the annotation quality and its `quality` reports it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivedistill.data.corpus import CorpusConfig
from drivedistill.data.store import SceneStore, SceneStoreWriter, write_shard
from drivedistill.models.latent_action import LatentActionConfig
from drivedistill.models.latent_action.encode import EGO_CODES_KEY
from drivedistill.models.perception import PerceptionConfig
from drivedistill.models.teachers.vlm import TEACHER_LOGITS_KEY, VLMTeacherConfig
from drivedistill.models.vlm import VLMConfig
from drivedistill.recipes import evodrive, latent_vla, vlm_ad
from drivedistill.recipes.base import StageContext, all_recipes
from drivedistill.recipes.extras import load_extras
from drivedistill.testing import random_scene


@dataclass
class _Art:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    key: str = "k"

    def store_dir(self) -> Path:
        return self.path / "store"


class _Runner:
    """Runs a stage function in `root/<name>` (no cache): what the pipeline's runner does, minus keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys: dict[str, Any] = {}

    def run(
        self, name: str, cfg: Any, inputs: list[Any], fn: Callable[[Path], dict[str, Any]], label: Any = None
    ) -> _Art:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        self.keys[name] = cfg
        return _Art(d, fn(d))


def _write_store(root: Path, prefix: str, n: int, val_fraction: float) -> None:
    writer = SceneStoreWriter(root, {"world": {"seed": 0}}, num_shards=1, val_fraction=val_fraction)
    scenes = []
    for i in range(n):
        s = random_scene(i + (100 if prefix == "c" else 0), episode=f"{prefix}{i // 2}", token=f"{prefix}{i}")
        s.meta["event"] = "lane_follow"
        scenes.append(s)
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=val_fraction, config_hash=writer.config_hash))
    writer.finish()


@pytest.fixture
def store(tmp_path: Path) -> _Art:
    _write_store(tmp_path / "collect" / "store", "a", 12, 0.34)
    return _Art(tmp_path / "collect")


def _ctx(runner: _Runner, store: _Art, name: str, prior: dict[str, Any], version: int) -> StageContext:
    return StageContext(name, version, runner, store, prior, None, "cpu", name)  # type: ignore[arg-type]


TINY = latent_vla.LatentVLARecipeConfig(
    lam=LatentActionConfig(dim=32, heads=2, encoder_layers=1, decoder_layers=1, detok_steps=20),
    lam_train=latent_vla.LamTrainConfig(epochs=1, batch_size=8, max_steps=2, progress=False),
    teacher=VLMTeacherConfig(
        vlm=VLMConfig(
            hidden_size=64, intermediate_size=128, vision_hidden_size=32, vision_intermediate_size=64
        )
    ),
    teacher_train=latent_vla.TeacherTrainConfig(epochs=1, batch_size=8, max_steps=2, progress=False),
    corpus=CorpusConfig(extra_episodes=3),
    gate_baseline_steps=5,
    probe_steps=5,
    image_hw=(64, 128),
)


def test_latent_vla_stages_train_on_the_corpus_and_compute_the_gate(
    tmp_path: Path, store: _Art, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[Any] = []

    def fake_collect(world: Any, out: Path, cfg: CorpusConfig, workers: int = 1) -> Path:
        collected.append((world, cfg))  # the world of the study's store, rebuilt from its manifest
        _write_store(Path(out), "c", 2 * cfg.extra_episodes, 0.0)
        return Path(out)

    monkeypatch.setattr("drivedistill.data.corpus.collect_corpus", fake_collect)
    runner = _Runner(tmp_path / "stages")
    lam = latent_vla.lam_stage(TINY, _ctx(runner, store, "latent_lam", {}, latent_vla.LAM_CODE_VERSION))
    assert collected and collected[0][0].seed == 0 and collected[0][1].extra_episodes == 3
    assert runner.keys["latent_lam"]["cfg"]["corpus"] == {"extra_episodes": 3, "seed_offset": 2000}
    scenes = SceneStore(store.store_dir())
    n_train = len(scenes.tokens("train"))
    assert lam.summary["samples"] == {"student_train": n_train, "lam_teacher_train": n_train + 6}
    # the students' extras cover the study store only; the corpus codes are kept apart for the teacher
    assert set(load_extras(lam.path / "extras.npz")[EGO_CODES_KEY]) == set(scenes.tokens(None))
    assert set(load_extras(lam.path / latent_vla.CORPUS_CODES)[EGO_CODES_KEY]) == {f"c{i}" for i in range(6)}
    # the detokenizer was refit on the frozen codes of the whole corpus; its floor is reported
    assert lam.summary["detokenizer"]["samples"] == n_train + 6
    assert lam.summary["detokenizer"]["steps"] == TINY.lam.detok_steps > 0
    assert np.isfinite(lam.summary["detokenizer"]["lam_decoded_ade_val_m"])

    prior = {"latent_lam": lam}
    teacher = latent_vla.teacher_stage(
        TINY, _ctx(runner, store, "latent_teacher", prior, latent_vla.TEACHER_CODE_VERSION)
    )
    assert set(load_extras(teacher.path / "extras.npz")[TEACHER_LOGITS_KEY]) == set(scenes.tokens("train"))
    gate = teacher.summary["gate"]
    assert {"beats_image_free", "reads_image"} <= set(gate["checks"])
    assert gate["student_ade_m"] is None and not gate["checks"]["beats_student_ade"]  # the students' part
    assert gate["val_samples"] == len(scenes.tokens("val"))

    q = latent_vla.quality(TINY, {"latent_lam": lam, "latent_teacher": teacher})
    assert {"teacher_beats_image_free", "teacher_reads_image", "teacher_beats_majority"} <= set(q["checks"])
    for k in ("code_accuracy", "image_free_accuracy", "blank_image_accuracy", "lam_decoded_ade_m"):
        assert isinstance(q["metrics"][k], float)
    assert q["metrics"]["samples"]["lam_teacher_train"] == n_train + 6
    assert q["pass"] == all(q["checks"].values())

    # the reference row: the teacher's greedy codes decoded by the LAM, one plan per validation scene
    val = [scenes.load(t) for t in scenes.tokens("val")]
    plans, extra = latent_vla.teacher_code_plans(TINY, teacher, val)
    assert plans.shape == (len(val), 8, 3) and np.isfinite(plans).all() and extra["params_m"] > 0


def test_latent_vla_declares_the_reference_row_and_the_student_gate() -> None:
    recipe = all_recipes()["latent_vla"]
    (ref,) = recipe.references
    assert ref.row == latent_vla.TEACHER_ROW == "latent_teacher/codes" and ref.stage == "latent_teacher"
    assert recipe.student_gate is latent_vla.student_gate

    def row(method: str, l2: float) -> dict[str, Any]:
        return {"method": method, "openloop": {"stp3": {"l2": {"avg": l2}}}, "pdms": {"pdms": 0.5}}

    cfg = latent_vla.LatentVLARecipeConfig()
    students = {"transfuser/imitation": row("imitation", 2.0), "ego_mlp/imitation": row("imitation", 3.0)}
    good = latent_vla.student_gate(cfg, {**students, "latent_teacher/codes": row("privileged", 1.5)})
    assert good["pass"] and good["metrics"]["best_imitation_student"] == "transfuser/imitation"
    bad = latent_vla.student_gate(cfg, {**students, "latent_teacher/codes": row("privileged", 2.5)})
    assert not bad["pass"] and bad["metrics"]["teacher_codes_l2_stp3_m"] == 2.5
    assert not latent_vla.student_gate(cfg, students)["pass"]  # the row is missing: the check fails


def test_the_oracle_meets_the_strongest_sft_row_of_a_learning_curve() -> None:
    """A curves run names its rows `vla/vla_sft-n<samples>`: the oracle's CE check takes the lowest CE
    among the vla_sft rows (it failed as 'missing' when it looked for `vla/vla_sft` only)."""
    from drivedistill.recipes import evodrive

    def row(method: str, l2: float, ce: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": method,
            "openloop": {"stp3": {"l2": {"avg": l2}}},
            "pdms": {"pdms": 0.5},
        }
        return out if ce is None else {**out, "ce_teacher_forced": ce}

    cfg = evodrive.EvoDriveRecipeConfig()
    models = {
        "transfuser/imitation-n250": row("imitation", 1.0),
        "transfuser/imitation-n3400": row("imitation", 0.5),
        "vla/vla_sft-n250": row("vla_sft", 1.0, ce=0.9),
        "vla/vla_sft-n3400": row("vla_sft", 0.7, ce=0.6),
    }
    good = evodrive.student_gate(cfg, {**models, "oracle/privileged": row("privileged", 0.2, ce=0.5)})
    assert good["pass"] and good["metrics"]["sft_student"] == "vla/vla_sft-n3400"
    assert good["metrics"]["best_imitation_student"] == "transfuser/imitation-n3400"
    bad = evodrive.student_gate(cfg, {**models, "oracle/privileged": row("privileged", 0.2, ce=0.7)})
    assert not bad["pass"] and not bad["checks"]["oracle_ce_below_sft_student"]  # 0.7 is not below 0.6
    del models["vla/vla_sft-n250"], models["vla/vla_sft-n3400"]
    assert not evodrive.student_gate(cfg, {**models, "oracle/privileged": row("privileged", 0.2, ce=0.1)})[
        "pass"
    ]


def test_a_teacher_of_one_seed_is_checked_against_that_seed_s_students() -> None:
    """teachers: per_seed — teacher k meets seed k's rows, not the means over seeds (which would give
    every seed's gate the same verdict)."""
    from drivedistill.pipeline.config import StudyConfig
    from drivedistill.pipeline.study import students_gates

    def run(seed: int, l2: float) -> dict[str, Any]:
        return {"seed": seed, "openloop": {"stp3": {"l2": {"avg": l2}}}, "pdms": {"pdms": 0.5}}

    # seed 0: the teacher's codes (1.0 m) beat the student (2.0 m); seed 1: they do not (3.0 vs 2.0 m);
    # the means (2.0 vs 2.0 m) would fail both
    per_seed = {
        "transfuser/imitation": [run(0, 2.0), run(1, 2.0)],
        "latent_teacher/codes": [run(0, 1.0), run(1, 3.0)],
    }
    models = {
        "transfuser/imitation": {"method": "imitation", **run(0, 2.0)},
        "latent_teacher/codes": {"method": "privileged", **run(0, 2.0)},
    }
    quality = {"latent_vla-s0": {"pass": True}, "latent_vla-s1": {"pass": True}, "latent_vla": {"pass": True}}
    gates = students_gates(StudyConfig(), quality, models, per_seed)
    assert gates["latent_vla-s0"]["pass"] and gates["latent_vla-s0"]["vs_students"]["seed"] == 0
    assert not gates["latent_vla-s1"]["pass"] and gates["latent_vla-s1"]["vs_students"]["seed"] == 1
    assert gates["latent_vla-s1"]["vs_students"]["metrics"]["teacher_codes_l2_stp3_m"] == 3.0
    # a teacher per run (no seed in its label) meets the means
    assert not gates["latent_vla"]["pass"] and gates["latent_vla"]["vs_students"]["seed"] == "mean over seeds"


def test_corpus_needs_a_world_store(tmp_path: Path) -> None:
    root = tmp_path / "collect" / "store"
    writer = SceneStoreWriter(root, {"source": {"name": "nuscenes"}}, num_shards=1, val_fraction=0.0)
    scenes = [random_scene(i, token=f"n{i}") for i in range(2)]
    writer.add_shard(write_shard(root, 0, scenes, val_fraction=0.0, config_hash=writer.config_hash))
    writer.finish()
    runner = _Runner(tmp_path / "stages")
    with pytest.raises(Exception, match="recipes.latent_vla.corpus.extra_episodes=0"):
        latent_vla.lam_stage(TINY, _ctx(runner, _Art(tmp_path / "collect"), "latent_lam", {}, 2))
    with pytest.raises(Exception, match="recipes.evodrive.corpus.extra_episodes=0"):
        evodrive.perception_stage(
            TINY_EVO, _ctx(runner, _Art(tmp_path / "collect"), "evodrive_perception", {}, 2)
        )


TINY_EVO = evodrive.EvoDriveRecipeConfig(
    vlm=VLMConfig(hidden_size=64, intermediate_size=128, vision_hidden_size=32, vision_intermediate_size=64),
    perception=PerceptionConfig(steps=3, batch_size=4, probe_steps=3),
    corpus=CorpusConfig(extra_episodes=3),
)


def test_evodrive_perception_pretrains_on_the_corpus_and_probes_on_the_students_split(
    tmp_path: Path, store: _Art, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[Any] = []

    def fake_collect(world: Any, out: Path, cfg: CorpusConfig, workers: int = 1) -> Path:
        collected.append(world.seed)
        _write_store(Path(out), "c", 2 * cfg.extra_episodes, 0.0)
        return Path(out)

    monkeypatch.setattr("drivedistill.data.corpus.collect_corpus", fake_collect)
    runner = _Runner(tmp_path / "stages")
    out = evodrive.perception_stage(TINY_EVO, _ctx(runner, store, "evodrive_perception", {}, 2))
    n_train = len(SceneStore(store.store_dir()).tokens("train"))
    assert collected == [0]  # from the world of the study's store
    assert out.summary["samples"] == {"probe_train": n_train, "pretrain": n_train + 6}
    assert runner.keys["evodrive_perception"]["cfg"]["corpus"] == {"extra_episodes": 3, "seed_offset": 2000}
    assert (out.path / "corpus" / "manifest.json").is_file() and (out.path / "perception").is_dir()
    # without a corpus the stage's key is what it was before the corpus existed
    runner = _Runner(tmp_path / "stages-plain")
    plain = dataclasses.replace(TINY_EVO, corpus=CorpusConfig())
    out = evodrive.perception_stage(plain, _ctx(runner, store, "evodrive_perception", {}, 2))
    assert "corpus" not in runner.keys["evodrive_perception"]["cfg"] and len(collected) == 1
    assert out.summary["samples"] == {"probe_train": n_train, "pretrain": n_train}


def test_vlm_ad_quality_reports_the_annotation_quality(tmp_path: Path, store: _Art) -> None:
    cfg = vlm_ad.VLMADRecipeConfig()
    runner = _Runner(tmp_path / "stages")
    art = vlm_ad.annotate_stage(cfg, _ctx(runner, store, "annotate", {}, vlm_ad.CODE_VERSION))
    aq = art.summary["annotation_quality"]
    assert aq["samples"] == 12 and aq["protocol"] == "cause_vs_world_event"
    # the rules' version is part of the stage key: new rules re-annotate instead of reading the old cache
    from drivedistill.annotate.rules import RULES_VERSION

    assert runner.keys["annotate"]["cfg"]["rules_version"] == RULES_VERSION
    q = vlm_ad.quality(cfg, {"annotate": art})
    assert {"few_failed_annotations", "annotations_accurate", "annotations_beyond_trajectory"} <= set(
        q["checks"]
    )
    assert q["metrics"]["annotation_quality"]["label_accuracy"] == aq["label_accuracy"]
    assert q["pass"] == all(q["checks"].values())
    # a summary of the previous stage version (no annotation quality) fails the gate instead of passing it
    old = dataclasses.replace(
        art, summary={k: v for k, v in art.summary.items() if k != "annotation_quality"}
    )
    assert not vlm_ad.quality(cfg, {"annotate": old})["pass"]
