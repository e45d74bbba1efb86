"""The one training loop, for every stage: students under a method, teachers, latent-action models.

    result = fit(method, dataset, TrainConfig(epochs=5), "runs/x", collate=dataset.collate,
                 config={"student": ..., "method": ..., "train": ...}, meta={"student": "transfuser", ...})

`model` is any nn.Module with `losses(batch) -> {"loss": total, part: detached, ...}`; it may declare
frozen submodules through `frozen()` (kept in eval mode, not optimised, not DDP-synchronised, not
saved). `data` is a map-style dataset: of samples when `collate` is given (batched `batch_size` at a
time), or of ready batches when `collate` is None (one per step). A batch is anything with `.to(device)`
and `.tokens` (the sample ids named when a loss goes non-finite).

Order and reproducibility: each epoch's order comes from `DistributedSampler(seed, epoch)` (one rank
on a single process), incomplete batches are dropped, and the DataLoader gets its own generator so the
global RNG only serves the model (dropout). A checkpoint holds weights, optimiser, scheduler, RNG and
the position in the epoch, so `resume=True` continues a killed run to the same weights, bit for bit on
a CPU. AdamW (no decay on biases/norms) with linear warm-up then cosine; gradient clipping; bf16/fp16
autocast on GPUs only. Losses stay on the device; every `log_every` steps they are averaged over ranks,
checked for NaN/Inf (raising with the step, the tokens and the part) and logged to TensorBoard.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from drivedistill.config import ConfigError, check, to_dict
from drivedistill.train import checkpoint as ckpt
from drivedistill.train.distributed import DistInfo, all_reduce_mean, init_distributed, wrap
from drivedistill.utils.runtime import seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (`--train.<field>=...`)."""

    epochs: int = field(default=10, metadata=check(ge=1))
    max_steps: int = field(
        default=0, metadata=check(ge=0)
    )  # > 0: stop after this many optimiser steps (caps `epochs`)
    batch_size: int = field(default=16, metadata=check(ge=1))  # per process
    lr: float = field(default=3e-4, metadata=check(gt=0))
    weight_decay: float = field(default=0.01, metadata=check(ge=0))  # AdamW, on weight matrices only
    warmup: float = field(
        default=0.03, metadata=check(ge=0, lt=1)
    )  # fraction of all steps with a linear warm-up
    min_lr_ratio: float = field(
        default=0.01, metadata=check(ge=0, le=1)
    )  # the cosine ends at lr · min_lr_ratio
    grad_clip: float = field(default=1.0, metadata=check(ge=0))  # max global gradient norm; 0 = off
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on GPU, fp32 on CPU
    seed: int = 0
    device: str = "auto"
    num_workers: int = field(default=0, metadata=check(ge=0))  # DataLoader workers
    log_every: int = field(
        default=10, metadata=check(ge=1)
    )  # steps between loss checks / TensorBoard scalars / progress updates
    checkpoint_every: int = field(
        default=0, metadata=check(ge=0)
    )  # steps between checkpoints; 0 = at the end of every epoch
    keep_checkpoints: int = field(default=2, metadata=check(ge=0))
    progress: bool = True  # a rich progress bar on rank 0
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters skip a step

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"train.warmup={self.warmup} is a fraction of all steps: use 0 <= warmup < 1")


@dataclass
class TrainResult:
    """Where the run ended: last step, its checkpoint, the last logged loss parts, throughput."""

    step: int
    checkpoint: Path | None
    losses: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = 0.0


def _first(items: Sequence[Any]) -> Any:
    return items[0]


def lr_factor(step: int, total: int, warmup: float, min_ratio: float) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warm-up, then cosine to `min_ratio`."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameters (e.g. constant_velocity): evaluate it directly "
            "instead of training it"
        )
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=False)


def _autocast_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and not device.startswith("cuda")):
        return None
    if not device.startswith("cuda"):
        raise ConfigError(f"train.precision={cfg.precision} needs a GPU; on {device} use fp32 or auto")
    if cfg.precision == "fp16" or (cfg.precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class _Window:
    """Loss parts of the last steps, kept on the device until the next check (no per-step sync)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.steps: list[int] = []
        self.tokens: list[list[str]] = []
        self.losses: list[dict[str, torch.Tensor]] = []

    def add(self, step: int, tokens: list[str], losses: Mapping[str, torch.Tensor]) -> None:
        self.steps.append(step)
        self.tokens.append(list(tokens))
        self.losses.append({k: v.detach().float().reshape(()) for k, v in losses.items()})

    def flush(self, info: DistInfo) -> dict[str, float]:
        """Mean of each part over the window (and ranks); raises on the first non-finite value."""
        if not self.steps:
            return {}
        keys = list(self.losses[0])
        for step, parts in zip(self.steps, self.losses):
            if list(parts) != keys:
                raise RuntimeError(
                    f"step {step}: loss parts changed from {keys} to {list(parts)}; keep them fixed"
                )
        table = all_reduce_mean(torch.stack([torch.stack([p[k] for k in keys]) for p in self.losses]), info)
        finite = torch.isfinite(table)
        if not bool(finite.all()):
            row, col = (int(i) for i in (~finite).nonzero()[0])
            bad = {k: float(v) for k, v in zip(keys, table[row].tolist())}
            raise FloatingPointError(
                f"non-finite loss at step {self.steps[row]}: part '{keys[col]}' = {bad[keys[col]]} "
                f"(all parts {bad}); batch tokens {self.tokens[row]}"
            )
        means = dict(zip(keys, table.mean(dim=0).tolist()))
        self.clear()
        return means


def fit(
    model: nn.Module,
    data: Dataset[Any] | Sequence[Any],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    collate: Callable[[Sequence[Any]], Any] | None = None,
    config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    resume: bool = False,
    abort_after_step: int = 0,
) -> TrainResult:
    """Train `model` on `data`, checkpointing into `out_dir`; see the module docstring.

    config  resolved configuration saved as config.yaml (the train section is added)
    meta    registry names etc. saved in meta.json (e.g. {"student": "transfuser", "method": "imitation",
            "student_prefix": "student."}) so that `load_student` can rebuild the model
    abort_after_step  > 0: stop right after that step without a final checkpoint, as a kill would
            (for resume tests)
    """
    out = Path(out_dir)
    info = init_distributed(cfg.device)
    device = info.device
    full_config = {**dict(config or {}), "train": to_dict(cfg)}
    partial = ckpt.remove_partial(out) if info.is_main else []  # saves a kill or a full disk cut short
    existing = (out / "checkpoints" / ckpt.LATEST).exists()
    if existing and not resume:
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume and not existing:
        if not partial:
            raise FileNotFoundError(f"--resume: {out} has no checkpoint yet; drop --resume to start the run")
        log.warning(
            "%s: the first checkpoint save was interrupted (removed %s); starting from step 0", out, partial
        )
        resume = False

    n = len(data)  # type: ignore[arg-type]  # map-style datasets define __len__
    per_step = cfg.batch_size if collate is not None else 1
    steps_per_epoch = (n // info.world_size) // per_step
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the data has {n} items, fewer than batch_size·processes = {per_step}·{info.world_size}; "
            "lower --train.batch_size or add data"
        )
    total = cfg.epochs * steps_per_epoch
    total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total

    seed_everything(cfg.seed + info.rank)
    model.to(device)
    frozen = list(getattr(model, "frozen", list)())
    for m in frozen:
        m.requires_grad_(False)
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup, cfg.min_lr_ratio)
    )
    amp_dtype = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = 0
    if resume:
        point = ckpt.resume_point(out)  # the newest checkpoint that reads back completely
        saved = ckpt.read_config(point)
        if saved != full_config:
            diff = sorted(k for k in set(saved) | set(full_config) if saved.get(k) != full_config.get(k))
            raise ConfigError(
                f"--resume: the config differs from {out}'s in sections {diff}; resume with the same config"
            )
        ckpt.load_weights(point, model)
        state = ckpt.read_state(point)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rng = state["rng_per_rank"]
        if len(rng) != info.world_size:
            raise ConfigError(
                f"--resume: the run used {len(rng)} processes, now {info.world_size}; use the same"
            )
        ckpt.set_rng_state(rng[info.rank])
    trainable = [p for p in model.parameters() if p.requires_grad]
    runner = wrap(model, info, cfg.find_unused_parameters)
    base_meta = {
        **dict(meta or {}),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "world_size": info.world_size,
    }
    extra_state = getattr(model, "extra_state", None)

    def save(step: int) -> Path | None:
        # every rank contributes its RNG state (dropout differs per rank); rank 0 writes
        rng = [ckpt.rng_state()]
        if info.distributed:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if not info.is_main:
            return None
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng_per_rank": rng,
        }
        m = {**base_meta, "epoch": step // steps_per_epoch, "complete": step >= total}
        if callable(extra_state):
            m["extra"] = extra_state()
        return ckpt.save_checkpoint(out, step, model, full_config, m, state, cfg.keep_checkpoints)

    writer = _tensorboard(out, info)
    progress, task = _progress(cfg, info, total, step)
    window, last, last_path, seen, t0 = _Window(), {}, None, 0, time.perf_counter()
    epoch = step // steps_per_epoch
    while step < total:
        sampler: DistributedSampler[Any] = DistributedSampler(
            data,  # type: ignore[arg-type]
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i * per_step : (i + 1) * per_step] for i in range(steps_per_epoch)]
        loader: DataLoader[Any] = DataLoader(
            data,  # type: ignore[arg-type]
            batch_sampler=batches[step - epoch * steps_per_epoch :],
            collate_fn=collate or _first,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        model.train()
        for m in frozen:
            m.eval()
        for batch in loader:
            batch = batch.to(device)
            with torch.autocast(
                device.split(":")[0], dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                losses = runner(batch)
            if "loss" not in losses:
                raise KeyError(
                    f"{type(model).__name__}.losses() returned {sorted(losses)}; it must include 'loss'"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            seen += len(batch.tokens)
            window.add(step, batch.tokens, losses)
            boundary = step % steps_per_epoch == 0 or step == total
            save_now = (
                (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)
                or (boundary and cfg.checkpoint_every == 0)
                or step == total
            )
            if step % cfg.log_every == 0 or save_now:
                last = window.flush(info)
                rate = seen * info.world_size / (time.perf_counter() - t0)
                _log(writer, progress, task, step, last, float(scheduler.get_last_lr()[0]), rate)
            if save_now:
                last_path = save(step) or last_path
            if step == abort_after_step or step >= total:
                break
        if step == abort_after_step:
            break
        epoch += 1
    if progress is not None:
        progress.stop()
    if writer is not None:
        writer.close()
    rate = seen * info.world_size / max(time.perf_counter() - t0, 1e-9)
    return TrainResult(step, last_path, last, rate)


def _tensorboard(out: Path, info: DistInfo) -> Any:
    if not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def _progress(cfg: TrainConfig, info: DistInfo, total: int, start: int) -> tuple[Any, Any]:
    if not (cfg.progress and info.is_main):
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task("train", total=total, completed=start, status="")
    progress.start()
    return progress, task


def _log(
    writer: Any, progress: Any, task: Any, step: int, losses: Mapping[str, float], lr: float, rate: float
) -> None:
    if writer is not None:
        for k, v in losses.items():
            writer.add_scalar(f"loss/{k}", v, step)
        writer.add_scalar("lr", lr, step)
        writer.add_scalar("samples_per_s", rate, step)
    if progress is not None:
        status = f"loss {losses.get('loss', float('nan')):.4f}  lr {lr:.2e}  {rate:.1f} samples/s"
        progress.update(task, completed=step, status=status)
