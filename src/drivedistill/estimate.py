"""Scale estimates of a study, computed from its config alone (`drivedistill run --dry-run` prints them).

Per training stage: parameter count, estimated GPU memory of one data-parallel process and the expected
time on a named GPU. Nothing is loaded or run; VLM sizes come from building the Qwen2.5-VL that the
`VLMConfig` describes on the `meta` device (exact counts, no memory).

Memory of one process (data parallel without sharding; this trainer's AdamW keeps its two moments in
the parameters' dtype, compute runs under bf16 autocast):

    weights      P_frozen · b_w + P_t · b_t    b_w = 2 (bf16) or 4 (fp32): `vlm.dtype` as resolved on a
                                               GPU ("auto": fp32 for full fine-tuning, bf16 under LoRA);
                                               b_t = b_w for full fine-tuning, 4 for LoRA adapters (fp32)
    gradients    P_t · b_t                     P_t = trainable parameters
    AdamW        P_t · 2 · b_t                 (full fine-tuning in fp32: 4 + 4 + 8 = 16 bytes / parameter)
    activations  Σ_stacks L · B · S · H · 34   bytes, bf16 (Korthikanti et al. 2022, flash attention: no
                                               S² term); with gradient checkpointing
                                               L · B · S · H · 2 + one layer's 34 · B · S · H
    logits       B · S · V · 4                 fp32 logits for the cross-entropy

summed over the language stack (S = tokens per sample) and the vision stack (S = image patches).

Time: a training token costs ≈ 6 · P FLOPs (forward 2P, backward 4P; LoRA still back-propagates through
the frozen weights: ≈ 4 · P), summed as 6 · (P_language · S + P_vision · patches) per sample; frozen-teacher
inference costs 2 · P per token. Seconds = FLOPs / (peak bf16 FLOP/s · MFU · GPUs).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from drivedistill.models.vlm.config import VLMConfig, parameter_counts

# dense bf16 peak [FLOP/s] and memory [GB] of one GPU (A100 SXM 80 GB, H100 SXM 80 GB)
GPUS: dict[str, tuple[float, float]] = {"A100": (312e12, 80.0), "H100": (989e12, 80.0)}
MFU = 0.35  # model FLOP utilisation assumed for VLM fine-tuning (typical 0.3–0.45 with flash attention)
NUM_GPUS = 8  # the papers' node: 8 GPUs, data parallel
# text tokens per sample besides the image tokens (prompt + answer), measured order of magnitude of the
# project's prompts (models/vlm/prompt.py, teachers/vlm.py) — the image tokens dominate at paper scale
TEXT_TOKENS = {"vla": 260, "oracle": 345, "latent_teacher": 70, "annotator": 550}
NUSCENES_TRAIN_SAMPLES = 28130  # nuScenes trainval, train split (700 scenes, 2 Hz keyframes)
NAVSIM_TRAIN_SAMPLES = 103288  # NAVSIM navtrain


@dataclass
class StageEstimate:
    """One stage: sizes, memory [GB] per process, and hours on `NUM_GPUS` GPUs of each kind."""

    stage: str
    params: int
    trainable: int
    tokens_per_sample: int = 0
    samples: int = 0  # samples processed (epochs × dataset, or steps × batch)
    batch_size: int = 0
    memory_gb: dict[str, float] = field(default_factory=dict)  # weights, grads, adamw, activations, total
    hours: dict[str, float] = field(default_factory=dict)  # GPU name → wall-clock hours on NUM_GPUS
    note: str = ""


def _count(cfg: VLMConfig) -> dict[str, int]:
    key = json.dumps({k: v for k, v in asdict(cfg).items() if k != "pretrained_dir"}, sort_keys=True)
    return _count_cached(key)


@functools.lru_cache(maxsize=16)
def _count_cached(key: str) -> dict[str, int]:
    raw = json.loads(key)
    raw["image_hw"] = tuple(raw["image_hw"])
    return parameter_counts(VLMConfig(**raw))


def vlm_from_checkpoint(cfg: VLMConfig) -> VLMConfig:
    """`cfg` with the architecture of `cfg.pretrained_dir`'s config.json when that file exists (a real
    checkpoint's size wins over the preset's)."""
    path = Path(cfg.pretrained_dir) / "config.json" if cfg.pretrained_dir else None
    if path is None or not path.is_file():
        return cfg
    qc = json.loads(path.read_text())
    tc, vc = qc.get("text_config", qc), qc["vision_config"]
    return replace(
        cfg, vocab_size=tc["vocab_size"], hidden_size=tc["hidden_size"], num_layers=tc["num_hidden_layers"],
        num_heads=tc["num_attention_heads"], num_kv_heads=tc["num_key_value_heads"],
        intermediate_size=tc["intermediate_size"], vision_depth=vc["depth"], vision_hidden_size=vc["hidden_size"],
        vision_heads=vc["num_heads"], vision_intermediate_size=vc["intermediate_size"], patch_size=vc["patch_size"],
        merge_size=vc["spatial_merge_size"], tie_word_embeddings=bool(qc.get("tie_word_embeddings", False)),
    )  # fmt: skip


def processed_tokens(cfg: VLMConfig, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 128 * 128) -> int:
    """Visual tokens of one `cfg.image_hw` camera image after Qwen2.5-VL's `smart_resize` (transformers'
    own function: multiples of patch·merge within [min_pixels, max_pixels]; defaults: the values in the
    Qwen2.5-VL-3B-Instruct release's preprocessor_config.json)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(
        int(cfg.image_hw[0]), int(cfg.image_hw[1]), factor=cfg.patch_size * cfg.merge_size,
        min_pixels=min_pixels, max_pixels=max_pixels,
    )  # fmt: skip
    return (h // cfg.patch_size) * (w // cfg.patch_size) // cfg.merge_size**2


def vlm_train_estimate(
    stage: str,
    cfg: VLMConfig,
    images_per_sample: int,
    text_tokens: int,
    samples: int,
    batch_size: int,
    vision_only: bool = False,
    teacher: tuple[VLMConfig, int, int] | None = None,
) -> StageEstimate:
    """Memory and time of fine-tuning the VLM of `cfg` (see the module docstring for the formulas).

    `vision_only`: only the vision encoder trains (perception pretraining). `teacher` = (its VLMConfig,
    images, text tokens) of a frozen teacher run once per sample (EvoDrive's precomputed oracle targets:
    a coarse and a refined pass)."""
    cfg = vlm_from_checkpoint(cfg)
    counts = _count(cfg)
    vis_tokens = processed_tokens(cfg) * images_per_sample
    patches = vis_tokens * cfg.merge_size**2
    seq = vis_tokens + text_tokens
    params = counts["vision"] if vision_only else counts["total"]
    lora = cfg.lora_rank > 0 and not vision_only
    if lora:  # adapters on the q/k/v/o projections of every decoder layer
        head_dim = cfg.hidden_size // cfg.num_heads
        kv = cfg.num_kv_heads * head_dim
        trainable = (
            cfg.num_layers
            * cfg.lora_rank
            * (2 * (cfg.hidden_size + cfg.hidden_size) + 2 * (cfg.hidden_size + kv))
        )
    else:
        trainable = params
    if cfg.dtype == "auto":  # as VLMConfig.torch_dtype resolves it on a GPU
        b_w = 2 if lora else 4
    else:
        b_w = 2 if cfg.dtype in ("bfloat16", "float16") else 4
    b_t = 4 if lora else b_w
    stacks = [(cfg.vision_depth, patches, cfg.vision_hidden_size)]
    if not vision_only:
        stacks.append((cfg.num_layers, seq, cfg.hidden_size))
    act = 0.0
    for layers, s, h in stacks:
        if cfg.gradient_checkpointing:
            act += layers * batch_size * s * h * 2 + 34 * batch_size * s * h
        else:
            act += layers * batch_size * s * h * 34
    logits = 0 if vision_only else batch_size * seq * cfg.vocab_size * 4
    gb = 1024**3
    memory = {
        "weights": ((params - trainable) * b_w + trainable * b_t) / gb if lora else params * b_w / gb,
        "grads": trainable * b_t / gb,
        "adamw": trainable * 2 * b_t / gb,
        "activations": (act + logits) / gb,
    }
    memory["total"] = sum(memory.values())
    per_token = 4 if lora else 6
    flops = per_token * counts["vision"] * patches * samples
    if not vision_only:
        flops += per_token * counts["language"] * seq * samples
    note = "vision encoder only" if vision_only else ("LoRA" if lora else "full fine-tuning")
    if teacher is not None:
        tcfg = vlm_from_checkpoint(teacher[0])
        tcounts = _count(tcfg)
        t_vis = processed_tokens(tcfg) * teacher[1]
        t_seq = t_vis + teacher[2]
        flops += (
            2 * 2 * (tcounts["language"] * t_seq + tcounts["vision"] * t_vis * tcfg.merge_size**2) * samples
        )
        note += " + oracle targets (2 passes)"
    hours = {name: flops / (peak * MFU * NUM_GPUS) / 3600 for name, (peak, _) in GPUS.items()}
    return StageEstimate(stage, params, trainable, seq, samples, batch_size, memory, hours, note)


def small_model_estimate(stage: str, model: Any, batch_size: int) -> StageEstimate:
    """A small non-VLM model (students, the latent action model): parameters, weights + grads + AdamW in
    fp32; activations and time are not estimated (the 6·P·tokens rule does not apply to CNNs/BEV grids;
    these stages take minutes on one GPU)."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gb = 1024**3
    memory = {"weights": params * 4 / gb, "grads": trainable * 4 / gb, "adamw": trainable * 8 / gb}
    memory["total"] = sum(memory.values())
    return StageEstimate(
        stage, params, trainable, batch_size=batch_size, memory_gb=memory, note="small model"
    )


def train_samples(cfg: Any) -> int:
    """Training samples of the study's data: nuScenes / NAVSIM train split sizes for those sources; for
    the world, episodes × samples per episode (every 0.5 s from 2 s to the end minus 4 s), × (1 − val_fraction)
    unless the world has dedicated val episodes."""
    name = str(cfg.source.get("name", "")) if cfg.source else ""
    if name == "nuscenes":
        return NUSCENES_TRAIN_SAMPLES
    if name == "navsim":
        return NAVSIM_TRAIN_SAMPLES
    world = cfg.world
    episodes = int(world.get("num_episodes", 50))
    seconds = float(world.get("episode_seconds", 14.0))
    per_episode = max(1, int((seconds - 6.0) / 0.5) + 1)
    if int(world.get("val_episodes", 0)) > 0:  # dedicated val episodes: every num_episodes trains
        return episodes * per_episode
    return int(episodes * per_episode * (1 - cfg.val_fraction))


def camera_hw(cfg: Any) -> tuple[int, int]:
    cam = cfg.world.get("camera", {})
    return int(cam.get("height", 128)), int(cam.get("width", 256))


def _merge(*parts: dict[str, Any] | None) -> dict[str, Any]:
    from drivedistill.config import deep_merge

    out: dict[str, Any] = {}
    for p in parts:
        out = deep_merge(out, p or {})
    return out


def estimate_study(cfg: Any) -> list[StageEstimate]:
    """Per stage estimates of a `StudyConfig` (recipe stages of the rows' methods, then each row)."""
    from drivedistill import registry
    from drivedistill.config import from_dict

    samples = train_samples(cfg)
    cam = camera_hw(cfg)
    methods = cfg.methods_used()
    out: list[StageEstimate] = []
    evodrive = methods & {"vla_sft", "evodrive"} or any(m.student == "vla" for m in cfg.models)
    if evodrive:
        rc = cfg.recipe("evodrive")
        vlm = replace(rc.vlm, image_hw=tuple(rc.image_hw or cam))
        p = rc.perception
        out.append(
            vlm_train_estimate("evodrive_perception", vlm, 1, 0, p.steps * p.batch_size, p.batch_size, True)
        )
        t = rc.oracle_train
        oracle_vlm = replace(
            vlm, **{k: getattr(rc.oracle.vlm, k) for k in ("dtype", "gradient_checkpointing", "lora_rank")}
        )
        out.append(
            vlm_train_estimate(
                "evodrive_oracle", oracle_vlm, 4, TEXT_TOKENS["oracle"], samples * t.epochs, t.batch_size
            )
        )
    if methods & {"latent_vla", "latent_vla_distill"}:
        rc = cfg.recipe("latent_vla")
        from drivedistill.models.latent_action import LatentActionModel

        lam = LatentActionModel(rc.lam)
        out.append(small_model_estimate("latent_vla_lam (env + ego)", lam, rc.lam_train.batch_size))
        vlm = replace(
            rc.teacher.vlm, image_hw=tuple(rc.image_hw or cam), pretrained_dir=rc.teacher.pretrained
        )
        t = rc.teacher_train
        out.append(
            vlm_train_estimate(
                "latent_vla_teacher", vlm, 1, TEXT_TOKENS["latent_teacher"], samples * t.epochs, t.batch_size
            )
        )
    for model in cfg.models:
        if model.method == "none":
            continue
        train = _merge(cfg.train, model.train)
        epochs, batch = int(train.get("epochs", 10)), int(train.get("batch_size", 16))
        entry = registry.get("student", model.student)
        assert entry.config_cls is not None
        scfg: Any = from_dict(
            entry.config_cls,
            _merge(cfg.students.get(model.student), model.student_cfg),
            f"students.{model.student}",
        )
        if model.student == "vla":
            rc = cfg.recipe("evodrive")
            vlm = replace(rc.vlm, image_hw=tuple(rc.image_hw or cam), **{
                k: getattr(scfg.vlm, k) for k in ("dtype", "gradient_checkpointing", "lora_rank")})  # fmt: skip
            teacher = (vlm, 4, TEXT_TOKENS["oracle"]) if model.method == "evodrive" else None
            out.append(
                vlm_train_estimate(
                    f"train {model.name}",
                    vlm,
                    1,
                    TEXT_TOKENS["vla"],
                    samples * epochs,
                    batch,
                    teacher=teacher,
                )
            )
            continue
        import torch

        if getattr(scfg, "bev_channels", None) == 0:  # "from the data": the world's BEV raster
            from drivedistill.world.bev import BEV_CHANNELS

            scfg = replace(scfg, bev_channels=len(BEV_CHANNELS))
        try:
            with torch.device("meta"):
                student = registry.build("student", model.student, scfg)
            out.append(small_model_estimate(f"train {model.name}", student, batch))
        except Exception as e:  # a student that cannot be built on the meta device: say so
            out.append(StageEstimate(f"train {model.name}", 0, 0, note=f"not estimated ({type(e).__name__})"))
    return out


def format_estimates(estimates: list[StageEstimate]) -> list[str]:
    """Printable lines: stage, params, trainable, tokens/sample, memory per process, hours per GPU kind."""
    gpus = " ".join(f"{f'h on {NUM_GPUS}×{g}':>12}" for g in GPUS)
    lines = [
        f"scale estimate (MFU {MFU:.2f}; memory per data-parallel process: weights + grads + AdamW + "
        "activations; "
        "formulas in docs/pretrained-vlm.md)",
        f"  {'stage':<42} {'params':>8} {'trainable':>9} {'tok/smp':>7} {'mem GB':>7} {gpus}",
    ]
    for e in estimates:
        hours = " ".join(f"{e.hours[g]:>12.1f}" if g in e.hours else f"{'—':>12}" for g in GPUS)
        mem = f"{e.memory_gb['total']:7.1f}" if e.memory_gb else f"{'—':>7}"
        tok = str(e.tokens_per_sample) if e.tokens_per_sample else "—"
        lines.append(
            f"  {e.stage:<42} {_human(e.params):>8} {_human(e.trainable):>9} {tok:>7} {mem} {hours}  {e.note}"
        )
    return lines


def _human(n: int) -> str:
    if n == 0:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
