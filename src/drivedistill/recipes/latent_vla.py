"""LatentVLA: a latent action model gives every sample 12 ego codes; a VLM teacher learns to predict them; students fuse or distil it.

Stages: `latent_lam` (the two-stage latent action model, env then ego; writes the ego codes as extras
and probes them) and `latent_teacher` (the latent-action VLM teacher trained on those codes; writes
its teacher-forced logits as extras, so distillation never runs the VLM, and saves the teacher as the
artifact "teacher/vlm" that `latent_vla` runs in the loop).

Corpus (`corpus.extra_episodes`, LatentVLA's "more video than labels"): the LAM stage collects that many
extra episodes of the study's world under another seed (data/corpus.py) into its own
directory; the LAM and the teacher train on the students' train split + those episodes. The students
never see them: the extras (codes, logits) the methods read cover the study store's samples only.

Gates: the teacher stage computes `latent_teacher_quality` (methods/latent_vla_quality.py: code accuracy
against the image-free and blank-image baselines, the LAM's decoding floor, the decoded ADE); `quality`
reads it. The reference row "latent_teacher/codes" is the teacher's greedy codes decoded to a trajectory
by the LAM's detokenizer, scored by the pipeline like any row; `student_gate` compares its ST-P3 L2 with
the best imitation student's.

Control option `teacher_init: untrained`: the teacher stage saves the freshly initialised teacher
(same seed, no training) and its logits: `latent_vla` rows then fuse features of an untrained VLM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drivedistill.config import ConfigError, check, to_dict
from drivedistill.data.corpus import CorpusConfig
from drivedistill.models.latent_action import LatentActionConfig
from drivedistill.models.teachers.vlm import VLMTeacherConfig
from drivedistill.models.vlm import VLMConfig
from drivedistill.recipes.base import MethodUse, Recipe, Reference, Stage, StageContext, store_image_hw
from drivedistill.registry import register
from drivedistill.train.loop import TrainConfig, train_section

LAM_CODE_VERSION = 3  # bump when `lam_stage` computes something else with an unchanged config
# 2: trains on the store + corpus, saves the LAM ("lam/"), records the sample counts
# 3: codes conditioned on the current ego status (lam.state_cond); the detokenizer refit on the frozen
#    codes (lam.detok_steps); the LAM's decoding floor in the summary
TEACHER_CODE_VERSION = 3  # the same for `teacher_stage`
# 2: trains on the store + corpus, computes `latent_teacher_quality`, keeps a copy of the LAM
# 3: the gate decodes codes with the current ego status (a LAM with state_cond)
REFERENCE_CODE_VERSION = 2  # the same for `teacher_code_plans` (the "latent_teacher/codes" row)
# 2: decodes the teacher's codes with the current ego status
METHOD_CODE_VERSION = 1  # the same for the latent_vla / latent_vla_distill methods' training


@dataclass
class LamTrainConfig(TrainConfig):
    """Training of each latent-action-model stage (env, ego)."""

    # re-declared defaults keep TrainConfig's ranges (a plain re-declaration would drop them)
    epochs: int = field(default=10, metadata=check(ge=1))
    batch_size: int = field(default=16, metadata=check(ge=1))
    lr: float = field(default=1e-3, metadata=check(gt=0))
    log_every: int = field(default=20, metadata=check(ge=1))


@dataclass
class TeacherTrainConfig(TrainConfig):
    """Training of the latent-action VLM teacher."""

    # re-declared defaults keep TrainConfig's ranges (a plain re-declaration would drop them)
    epochs: int = field(default=10, metadata=check(ge=1))
    batch_size: int = field(default=16, metadata=check(ge=1))
    lr: float = field(default=2e-3, metadata=check(gt=0))
    log_every: int = field(default=20, metadata=check(ge=1))


@dataclass
class LatentVLARecipeConfig:
    """`recipes.latent_vla`: the latent action model and the VLM teacher."""

    lam: LatentActionConfig = field(default_factory=LatentActionConfig)
    lam_train: LamTrainConfig = field(default_factory=LamTrainConfig)
    teacher: VLMTeacherConfig = field(default_factory=VLMTeacherConfig)
    teacher_train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)  # extra unlabelled episodes (LAM + teacher)
    # code accuracy the teacher must gain over image-free / blank image
    gate_margin_acc: float = field(default=0.02, metadata=check(ge=0, le=1))
    # training steps of the image-free baseline of the gate
    gate_baseline_steps: int = field(default=400, metadata=check(ge=1))
    # training steps of each trajectory probe of the LAM codes (latent_lam summary)
    probe_steps: int = field(default=400, metadata=check(ge=1))
    # (H, W) [px] the teacher reads; None: the store's camera
    image_hw: tuple[int, int] | None = field(default=None, metadata=check(ge=1))
    teacher_init: Literal["trained", "untrained"] = "trained"  # untrained: the control's random teacher

    def __post_init__(self) -> None:
        if self.teacher.vlm.image_hw != VLMConfig().image_hw:
            raise ConfigError(
                "recipes.latent_vla.teacher.vlm.image_hw: set recipes.latent_vla.image_hw instead"
            )


def _futures(store: Any, tokens: list[str]) -> np.ndarray:
    return np.stack([store.load(t).privileged.future_trajectory for t in tokens])


def _train(train: TrainConfig, ctx: StageContext) -> TrainConfig:
    """The stage's TrainConfig on the study's device, seeded by the teacher seed when there is one."""
    seed = train.seed if ctx.seed is None else ctx.seed
    return dataclasses.replace(train, device=ctx.device, seed=seed)


LAM_DIR, CORPUS_DIR, CORPUS_CODES = "lam", "corpus", "corpus_codes.npz"  # in the LAM stage directory


def save_lam(lam: Any, path: Path) -> None:
    """The trained LAM into `path/`: weights (model.safetensors) + its LatentActionConfig (config.json)."""
    from safetensors.torch import save_file

    from drivedistill.utils.io import atomic_write_json, atomic_write_with

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in lam.state_dict().items()}
    atomic_write_with(path / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(path / "config.json", to_dict(lam.cfg))


def load_lam(path: Path, device: str = "cpu") -> Any:
    """A LAM saved by `save_lam` (ego stage, eval mode)."""
    import json

    from safetensors.torch import load_file

    from drivedistill.config import from_dict
    from drivedistill.models.latent_action import LatentActionModel

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{cfg_file}: no saved latent action model here (re-run the latent_lam stage)"
        )
    raw = json.loads(cfg_file.read_text())
    raw.setdefault("state_cond", False)  # LAMs saved before the field existed decode from the codes alone
    lam = LatentActionModel(from_dict(LatentActionConfig, raw, str(cfg_file)))
    lam.set_stage("ego")
    lam.load_state_dict(load_file(str(path / "model.safetensors")))
    return lam.to(device).eval()


def _corpus_stores(lam_dir: Path) -> list[Any]:
    """The extra stores of the LAM/teacher corpus the LAM stage collected (none for extra_episodes 0)."""
    from drivedistill.data.store import SceneStore

    return [SceneStore(lam_dir / CORPUS_DIR)] if (lam_dir / CORPUS_DIR / "manifest.json").is_file() else []


def _refit_detokenizer(lam: Any, corpus: Any, codes: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    """`LatentActionModel.fit_detokenizer` on the frozen codes of every corpus sample (the students' train
    split + the extra episodes; their current ego status and GT future). Returns what it did."""
    import torch

    if lam.traj_decoder is None or lam.cfg.detok_steps == 0:
        return {"steps": 0}
    scenes = [corpus[i] for i in range(len(corpus))]
    lam.fit_detokenizer(
        torch.as_tensor(np.stack([codes[s.token] for s in scenes])),
        torch.as_tensor(np.stack([s.privileged.future_trajectory for s in scenes])),
        torch.as_tensor(np.stack([s.privileged.future_valid for s in scenes])),
        torch.as_tensor(np.stack([s.agent_input.ego_status for s in scenes])),
        seed=seed,
    )
    lam.eval()
    return {"steps": lam.cfg.detok_steps, "code_noise": lam.cfg.detok_code_noise, "samples": len(scenes)}


def _decoded_ade(lam: Any, store: Any, tokens: list[str], codes: Mapping[str, np.ndarray]) -> float:
    """ADE (`ade_8x0.5s`) [m] of the LAM's own codes of `tokens` decoded by its detokenizer: its floor."""
    from drivedistill.methods.latent_vla_quality import decode_codes, trajectory_ade

    loaded = [store.load(t) for t in tokens]
    pred = decode_codes(
        lam,
        np.stack([codes[t] for t in tokens]),
        np.stack([s.agent_input.ego_status for s in loaded]),
    )
    fut = np.stack([s.privileged.future_trajectory for s in loaded])
    return trajectory_ade(pred, fut, np.stack([s.privileged.future_valid for s in loaded]))


def lam_stage(cfg: LatentVLARecipeConfig, ctx: StageContext) -> Any:
    """Collect the corpus (if any), train the two-stage latent action model on the store's train split +
    the corpus; encode the 12 ego codes of every sample (store: extras.npz, read by the methods; corpus:
    corpus_codes.npz, read by the teacher stage only); probe them on the store's splits."""
    from drivedistill.data.corpus import corpus_dataset, corpus_sizes, study_corpus
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.latent_action import LatentActionModel, perplexity
    from drivedistill.models.latent_action.encode import (
        EGO_CODES_KEY,
        encode_latent_actions,
        position_majority_accuracy,
        probe_trajectory,
    )
    from drivedistill.recipes.extras import save_extras
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    train_cfg = _train(cfg.lam_train, ctx)
    store = ctx.store

    def run(d: Path) -> dict[str, Any]:
        import torch

        scenes = SceneStore(store.store_dir())
        extra_stores = study_corpus(scenes, cfg.corpus, d / CORPUS_DIR, "recipes.latent_vla.corpus")
        train = corpus_dataset(scenes, extra_stores)
        every = SceneDataset(scenes, None, cache_decoded=True)
        seed_everything(train_cfg.seed)
        lam = LatentActionModel(cfg.lam)
        for stage in ("env", "ego"):
            lam.set_stage(stage)
            run_dir = d / f"lam_{stage}"
            fit(
                lam,
                train,
                train_cfg,
                run_dir,
                collate=train.collate,
                resume=(run_dir / "checkpoints").exists(),
            )
        lam.eval()
        codes = encode_latent_actions(lam, every)
        env = encode_latent_actions(lam, every, which="env")
        save_extras(d / "extras.npz", {EGO_CODES_KEY: codes})  # the study store's samples only
        corpus_codes: dict[str, np.ndarray] = {}
        for extra in extra_stores:
            corpus_codes.update(encode_latent_actions(lam, SceneDataset(extra, None, cache_decoded=True)))
        if corpus_codes:  # corpus.extra_episodes 0: no corpus, no file
            save_extras(d / CORPUS_CODES, {EGO_CODES_KEY: corpus_codes})
        tr, va = scenes.tokens("train"), scenes.tokens("val")
        fut_tr, fut_va = _futures(scenes, tr), _futures(scenes, va)
        detok = _refit_detokenizer(lam, train, {**codes, **corpus_codes}, train_cfg.seed)
        detok["lam_decoded_ade_val_m"] = _decoded_ade(lam, scenes, va, codes)
        save_lam(lam, d / LAM_DIR)

        def arr(c: dict[str, np.ndarray], toks: list[str]) -> np.ndarray:
            return np.stack([c[t] for t in toks])

        k_env = lam.cfg.env_codebook_size
        ego_probe = probe_trajectory(
            arr(codes, tr), fut_tr, arr(codes, va), fut_va, 16, steps=cfg.probe_steps
        )
        env_probe = probe_trajectory(arr(env, tr), fut_tr, arr(env, va), fut_va, k_env, steps=cfg.probe_steps)
        shuffled = np.random.default_rng(0).permutation(arr(codes, va))
        shuffled_probe = probe_trajectory(arr(codes, tr), fut_tr, shuffled, fut_va, 16, steps=cfg.probe_steps)
        return {
            "samples": corpus_sizes(scenes, extra_stores),  # student_train, lam_teacher_train
            "corpus": to_dict(cfg.corpus),
            "ego_perplexity_val": float(perplexity(torch.as_tensor(arr(codes, va)), 16)),
            "env_perplexity_val": float(perplexity(torch.as_tensor(arr(env, va)), k_env)),
            "probe_ade_val_m": {
                "ego_codes": ego_probe.ade,
                "env_codes": env_probe.ade,
                "ego_codes_shuffled": shuffled_probe.ade,
                "mean_trajectory": ego_probe.mean_baseline_ade,
            },
            "ego_code_position_majority_accuracy_val": position_majority_accuracy(
                arr(codes, tr), arr(codes, va)
            ),
            "detokenizer": detok,
            "artifacts": {"lam": LAM_DIR},
        }

    key = {"lam": to_dict(cfg.lam), "train": train_section(train_cfg), "corpus": to_dict(cfg.corpus)}
    if cfg.probe_steps != 400:  # keyed only when changed: default-config caches keep their keys
        key["probe_steps"] = cfg.probe_steps
    return ctx.run(key, [store], run)


def teacher_stage(cfg: LatentVLARecipeConfig, ctx: StageContext) -> Any:
    """Train the latent-action VLM teacher on the LAM codes of the store's train split + the corpus (or
    not: `teacher_init: untrained`); cache its logits for every training sample of the store; compute
    its gate (`latent_teacher_quality` on the store's val split; the decoded-ADE part against the
    students is `student_gate`'s, on the reference row)."""
    import shutil

    from drivedistill import registry
    from drivedistill.data.corpus import corpus_dataset, corpus_sizes
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.methods.latent_vla_quality import latent_teacher_quality
    from drivedistill.models.latent_action.encode import EGO_CODES_KEY
    from drivedistill.models.teachers.vlm import TEACHER_LOGITS_KEY, cache_teacher_logits
    from drivedistill.recipes.extras import load_extras, save_extras
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    lam, store = ctx.prior["latent_lam"], ctx.store
    hw = cfg.image_hw or store_image_hw(store)
    teacher_cfg = dataclasses.replace(cfg.teacher, vlm=dataclasses.replace(cfg.teacher.vlm, image_hw=hw))
    train_cfg = _train(cfg.teacher_train, ctx)
    stage_cfg = {
        "teacher": to_dict(teacher_cfg),
        "train": train_section(train_cfg),
        "init": cfg.teacher_init,
        "gate": {"margin_acc": cfg.gate_margin_acc, "baseline_steps": cfg.gate_baseline_steps},
    }

    def run(d: Path) -> dict[str, Any]:
        import torch

        scenes = SceneStore(store.store_dir())
        extra_stores = _corpus_stores(lam.path)
        codes = dict(load_extras(lam.path / "extras.npz")[EGO_CODES_KEY])
        if extra_stores:
            codes.update(load_extras(lam.path / CORPUS_CODES)[EGO_CODES_KEY])
        extras = {EGO_CODES_KEY: codes}
        corpus = corpus_dataset(scenes, extra_stores, extras=extras)
        train = SceneDataset(scenes, "train", extras=extras, cache_decoded=True)  # the students' samples
        val = SceneDataset(scenes, "val", extras=extras, cache_decoded=True)
        seed_everything(train_cfg.seed)
        teacher = registry.build("teacher", "vlm", teacher_cfg)
        if cfg.teacher_init == "trained":
            resume = (d / "train" / "checkpoints").exists()
            fit(teacher, corpus, train_cfg, d / "train", collate=corpus.collate, resume=resume)
        teacher.eval()
        with torch.no_grad():
            parts = [
                teacher.losses(val.collate([val[i] for i in range(j, min(j + 32, len(val)))]))
                for j in range(0, len(val), 32)
            ]
        metrics = {
            k: float(np.mean([float(p[k]) for p in parts]))
            for k in ("action_nll", "perplexity", "token_acc", "action_acc")
            if k in parts[0]
        }
        teacher.save(d / "teacher")
        shutil.copytree(lam.path / LAM_DIR, d / LAM_DIR, dirs_exist_ok=True)  # the reference row decodes
        lam_model = load_lam(d / LAM_DIR, str(next(teacher.parameters()).device))
        gate = latent_teacher_quality(
            teacher,
            lam_model,
            train,
            val,
            student_ade_m=None,
            margin_acc=cfg.gate_margin_acc,
            baseline_steps=cfg.gate_baseline_steps,
        )
        logits = cache_teacher_logits(teacher, train)  # the store's train split only (students)
        save_extras(d / "extras.npz", {TEACHER_LOGITS_KEY: logits})
        return {
            "val": metrics,
            "init": cfg.teacher_init,
            "samples": corpus_sizes(scenes, extra_stores),
            "gate": gate,
            "artifacts": {"teacher/vlm": "teacher", "lam": LAM_DIR},
        }

    return ctx.run(stage_cfg, [store, lam], run)


def teacher_code_plans(
    cfg: LatentVLARecipeConfig, teacher_art: Any, scenes: list[Any]
) -> tuple[Any, dict[str, Any]]:
    """The latent teacher alone (row "latent_teacher/codes"): its greedy (free-running) ego codes from
    the camera and instruction, decoded to a 4-s future by the LAM's detokenizer → ((N, 8, 3) plans
    [m, m, rad] in the ego frame at t = 0, its parameter count). It reads no privileged information."""
    import torch

    from drivedistill.data.dataset import collate
    from drivedistill.models.teachers.vlm import load_teacher

    del cfg
    teacher = load_teacher(teacher_art.path / "teacher").eval()
    device = next(teacher.parameters()).device
    lam = load_lam(teacher_art.path / LAM_DIR, str(device))
    plans = []
    with torch.no_grad():
        for start in range(0, len(scenes), 32):
            inputs = collate(scenes[start : start + 32]).to(device).inputs
            codes = teacher.features(inputs).codes
            plans.append(lam.decode_trajectory(codes, inputs.ego_status).cpu().numpy())
    extra = {
        "params_m": sum(p.numel() for p in teacher.parameters()) / 1e6,
        "decoded_by": "LatentActionModel.decode_trajectory of the teacher's greedy codes (+ the ego status)",
    }
    return np.concatenate(plans).astype(np.float32), extra


PROBE_MARGIN = 0.95  # the codes' trajectory probe must beat the mean trajectory's ADE by 5 %


def quality(cfg: LatentVLARecipeConfig, stages: Mapping[str, Any]) -> dict[str, Any]:
    """Gate: the teacher predicts the ego codes on validation scenes better than the per-position
    majority code (the chance level of a code predictor), the codes carry the trajectory (their probe
    beats the mean trajectory), and `latent_teacher_quality`'s accuracy checks hold: the teacher beats
    the image-free baseline (previous codes + speed + command, no image) and loses accuracy with a blank
    camera, each by `gate_margin_acc`. Its decoded-ADE check needs the students: `student_gate`. Reads the
    stages' summaries; nothing is recomputed."""
    lam = stages["latent_lam"].summary
    teacher = stages["latent_teacher"].summary
    majority = lam.get("ego_code_position_majority_accuracy_val")
    action_acc = teacher.get("val", {}).get("action_acc")
    probe = lam.get("probe_ade_val_m", {})
    gate = teacher.get("gate", {})
    metrics = {
        "teacher_action_acc_val": action_acc,
        "majority_code_acc_val": majority,
        "ego_codes_probe_ade_m": probe.get("ego_codes"),
        "mean_trajectory_ade_m": probe.get("mean_trajectory"),
        "teacher_init": cfg.teacher_init,
        "samples": teacher.get("samples", lam.get("samples")),
        **{
            k: gate.get(k)
            for k in (
                "code_accuracy",
                "image_free_accuracy",
                "image_free_full_status_accuracy",
                "blank_image_accuracy",
                "position_majority_accuracy",
                "decoded_ade_m",
                "lam_decoded_ade_m",
                "mean_trajectory_ade_m",
                "ade_protocol",
                "margin_acc",
            )
            if k in gate
        },
    }
    gate_checks = gate.get("checks", {})
    checks = {
        "teacher_beats_majority": action_acc is not None and majority is not None and action_acc > majority,
        "codes_beat_mean_trajectory": None not in (probe.get("ego_codes"), probe.get("mean_trajectory"))
        and probe["ego_codes"] < PROBE_MARGIN * probe["mean_trajectory"],
        "teacher_beats_image_free": bool(gate_checks.get("beats_image_free", False)),
        "teacher_reads_image": bool(gate_checks.get("reads_image", False)),
    }
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


TEACHER_ROW = "latent_teacher/codes"
L2_PATH = ("openloop", "stp3", "l2", "avg")  # ST-P3 L2 [m], the pipeline's open-loop protocol


def student_gate(cfg: LatentVLARecipeConfig, models: Mapping[str, Any]) -> dict[str, Any]:
    """The latent teacher against this run's students: its decoded free-running codes (row
    "latent_teacher/codes") must plan with a lower ST-P3 L2 than the best imitation student, on the
    same validation scenes under the same protocol (the rows of the teacher's seed; means over seeds
    for a teacher per run). A missing row fails the check. Next to it, for information: the PDMS of
    both."""
    del cfg

    def value(row: str | None, *path: str) -> float | None:
        node: Any = models.get(row, {}) if row is not None else {}
        for p in path:
            node = node.get(p) if isinstance(node, Mapping) else None
        return float(node) if isinstance(node, int | float) else None

    students = {
        n: v
        for n, m in models.items()
        if isinstance(m, Mapping) and m.get("method") == "imitation" and (v := value(n, *L2_PATH)) is not None
    }
    best = min(students, key=students.__getitem__, default=None)
    teacher_l2 = value(TEACHER_ROW, *L2_PATH)
    best_l2 = students.get(best) if best is not None else None
    checks = {
        "teacher_codes_l2_below_best_student": teacher_l2 is not None
        and best_l2 is not None
        and teacher_l2 < best_l2
    }
    metrics = {
        "teacher_codes_l2_stp3_m": teacher_l2,
        "best_imitation_student": best,
        "best_imitation_l2_stp3_m": best_l2,
        "teacher_codes_pdms": value(TEACHER_ROW, "pdms", "pdms"),
        "best_imitation_pdms": value(best, "pdms", "pdms"),
    }
    return {"pass": all(checks.values()), "checks": checks, "metrics": metrics}


@register("recipe", "latent_vla", LatentVLARecipeConfig)
def build(cfg: LatentVLARecipeConfig) -> Recipe:
    del cfg
    needs = ("latent_lam", "latent_teacher")
    return Recipe(
        name="latent_vla",
        stages=(
            Stage("latent_lam", lam_stage, code_version=LAM_CODE_VERSION, cost=1.1),
            Stage(
                "latent_teacher", teacher_stage, ("latent_lam",), code_version=TEACHER_CODE_VERSION, cost=0.7
            ),
        ),
        methods=(
            MethodUse("latent_vla", needs, code_version=METHOD_CODE_VERSION, cost=1.5),
            MethodUse("latent_vla_distill", needs, code_version=METHOD_CODE_VERSION, cost=1.0),
        ),
        references=(
            Reference(
                TEACHER_ROW,
                "latent_teacher",
                teacher_code_plans,
                key=lambda c: {"code_version": REFERENCE_CODE_VERSION},
            ),
        ),
        quality=quality,
        student_gate=student_gate,
        row_options=("teacher_init",),
    )
