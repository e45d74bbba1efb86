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
a CPU. AdamW (no decay on biases/norms) with linear warm-up then cosine; gradient clipping. Losses stay on the device; every `log_every` steps they are averaged over ranks,
checked for NaN/Inf (raising with the step, the tokens and the part) and logged to TensorBoard.

Scale (docs/scale.md), all off on a CPU by default:
- `strategy`: `ddp` or `fsdp` (FSDP2 sharding) under torchrun, see train/distributed.py; checkpoints have
  the same layout either way (full tensors, gathered before rank 0 writes).
- `precision`: autocast dtype of the forward pass; weights, gradients and AdamW state stay fp32. `auto`
  is bf16 on a GPU that has it (fp16 + loss scaling otherwise) and fp32 on a CPU; `bf16` also runs on a
  CPU (slower there on most CPUs: it is for testing the path); `fp16` needs a GPU and DDP.
- `num_workers` > 0: one DataLoader for the whole run with persistent workers (`prefetch_factor` batches
  each ahead); on CUDA batches are collated into pinned memory.
- `compile`: `torch.compile` of the loss computation (after the DDP/FSDP wrapper); the first steps pay
  the compilation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from drivedistill.config import ConfigError, check, to_dict
from drivedistill.train import checkpoint as ckpt
from drivedistill.train.distributed import (
    DistInfo,
    all_reduce_mean,
    full_optimizer_state,
    full_state,
    init_distributed,
    shard_optimizer_state,
    wrap,
)
from drivedistill.utils.runtime import seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (`--train.<field>=...`)."""

    epochs: int = field(default=10, metadata=check(ge=1))
    # > 0: stop after this many optimiser steps (caps `epochs`)
    max_steps: int = field(default=0, metadata=check(ge=0))
    batch_size: int = field(default=16, metadata=check(ge=1))  # per process
    lr: float = field(default=3e-4, metadata=check(gt=0))
    weight_decay: float = field(default=0.01, metadata=check(ge=0))  # AdamW, on weight matrices only
    # fraction of all steps with a linear warm-up
    warmup: float = field(default=0.03, metadata=check(ge=0, lt=1))
    # the cosine ends at lr · min_lr_ratio
    min_lr_ratio: float = field(default=0.01, metadata=check(ge=0, le=1))
    grad_clip: float = field(default=1.0, metadata=check(ge=0))  # max global gradient norm; 0 = off
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on GPU, fp32 on CPU
    seed: int = field(default=0, metadata=check(ge=0))
    device: str = "auto"
    num_workers: int = field(default=0, metadata=check(ge=0))  # DataLoader workers
    # steps between loss checks / TensorBoard scalars / progress updates
    log_every: int = field(default=10, metadata=check(ge=1))
    # steps between checkpoints; 0 = at the end of every epoch
    checkpoint_every: int = field(default=0, metadata=check(ge=0))
    keep_checkpoints: int = field(default=2, metadata=check(ge=0))
    progress: bool = True  # a rich progress bar on rank 0
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters skip a step
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the weights
    compile: bool = False  # torch.compile the loss computation
    prefetch_factor: int = field(default=2, metadata=check(ge=1))  # batches per worker loaded ahead

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"train.warmup={self.warmup} is a fraction of all steps: use 0 <= warmup < 1")
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ConfigError(
                "train.precision=fp16 with train.strategy=fsdp: fp16 loss scaling is not synchronised over "
                "gradient shards here; use --train.precision=bf16 (or strategy=ddp)"
            )


# TrainConfig fields added after runs were first saved → their default. At that value a field is left out
# of the saved train section (`train_section`), so a run saved before the field existed still resumes and
# a pipeline stage key built from the section stays the same.
LATER_TRAIN_FIELDS: dict[str, Any] = {"strategy": "ddp", "compile": False, "prefetch_factor": 2}


def train_section(cfg: TrainConfig) -> dict[str, Any]:
    """The train section saved in config.yaml (and fit for stage keys): `to_dict(cfg)` without the
    later-added fields at their default."""
    return {
        k: v for k, v in to_dict(cfg).items() if not (k in LATER_TRAIN_FIELDS and v == LATER_TRAIN_FIELDS[k])
    }


@dataclass
class TrainResult:
    """Where the run ended: last step, its checkpoint, the last logged loss parts, throughput."""

    step: int
    checkpoint: Path | None
    losses: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = 0.0


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


def autocast_dtype(precision: str, device: str, strategy: str = "ddp") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: fp32, no autocast); see the module docstring."""
    cuda = device.startswith("cuda")
    if precision == "fp32" or (precision == "auto" and not cuda):
        return None
    if precision == "fp16" and not cuda:
        raise ConfigError(f"train.precision=fp16 needs a GPU; on {device} use bf16, fp32 or auto")
    bf16_ok = not cuda or torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise ConfigError("train.precision=bf16: this GPU has no bf16; use fp16 (with strategy=ddp) or fp32")
    if precision == "fp16" or (precision == "auto" and not bf16_ok):
        if strategy == "fsdp":
            raise ConfigError("train.strategy=fsdp on a GPU without bf16: use --train.precision=fp32")
        return torch.float16
    return torch.bfloat16


def loader_options(cfg: TrainConfig, device: str) -> dict[str, Any]:
    """DataLoader keyword arguments for worker processes and pinned memory (pinned on CUDA only)."""
    opts: dict[str, Any] = {"num_workers": cfg.num_workers, "pin_memory": device.startswith("cuda")}
    if cfg.num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=cfg.prefetch_factor)
    return opts


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` with `fn` applied to every tensor inside (dataclasses, dicts, lists and tuples rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: map_tensors(getattr(obj, f.name), fn) for f in fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


class _Pinnable:
    """A collated batch the DataLoader's pin-memory thread can pin (it calls `pin_memory()` on objects it
    does not know, such as the `Batch` dataclass); the thread returns the pinned batch itself."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def pin_memory(self, device: Any = None) -> Any:
        return map_tensors(self.batch, lambda t: t.pin_memory())


class _Collate:
    """Picklable collate for worker processes: `collate(items)`, or the single ready batch; wrapped in
    `_Pinnable` when pinning."""

    def __init__(self, collate: Callable[[Sequence[Any]], Any] | None, pin: bool) -> None:
        self.collate, self.pin = collate, pin

    def __call__(self, items: Sequence[Any]) -> Any:
        batch = self.collate(items) if self.collate is not None else items[0]
        return _Pinnable(batch) if self.pin else batch


class _EpochBatches:
    """Batch sampler of one epoch (`set_epoch(epoch, skip)`): DistributedSampler(seed, epoch)'s order for
    this rank, cut into `per_step` batches, incomplete last batch dropped, the first `skip` omitted. One
    DataLoader serves the whole run with it, so persistent workers survive epochs."""

    def __init__(self, data: Any, info: DistInfo, seed: int, per_step: int, steps: int) -> None:
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            data, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.per_step, self.steps, self.skip = per_step, steps, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Any:
        order = list(self.sampler)
        for i in range(self.skip, self.steps):
            yield order[i * self.per_step : (i + 1) * self.per_step]

    def __len__(self) -> int:
        return self.steps - self.skip


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
    full_config = {**dict(config or {}), "train": train_section(cfg)}
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
    amp_dtype = autocast_dtype(cfg.precision, device, cfg.strategy if info.distributed else "ddp")
    fsdp = info.distributed and cfg.strategy == "fsdp"
    state: dict[str, Any] = {}
    if resume:  # weights go into the unwrapped model (FSDP then shards them)
        point = ckpt.resume_point(out)  # the newest checkpoint that reads back completely
        saved = ckpt.read_config(point)
        if saved != full_config:
            diff = sorted(k for k in set(saved) | set(full_config) if saved.get(k) != full_config.get(k))
            raise ConfigError(
                f"--resume: the config differs from {out}'s in sections {diff}; resume with the same config"
            )
        ckpt.load_weights(point, model)
        state = ckpt.read_state(point)
    runner = wrap(model, info, cfg.find_unused_parameters, cfg.strategy)
    optimizer = _optimizer(model, cfg)  # after wrap: FSDP replaces the parameters by their shards
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup, cfg.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = 0
    if resume:
        opt_state = state["optimizer"]
        optimizer.load_state_dict(shard_optimizer_state(opt_state, optimizer) if fsdp else opt_state)
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
    if cfg.compile:
        runner = torch.compile(runner)  # type: ignore[assignment]
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
        # FSDP: every rank takes part in gathering the shards; the checkpoint holds full tensors
        weights = full_state(model, keep=info.is_main) if fsdp else None
        opt_state = full_optimizer_state(optimizer, keep=info.is_main) if fsdp else None
        if not info.is_main:
            return None
        state = {
            "optimizer": opt_state if opt_state is not None else optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng_per_rank": rng,
        }
        m = {**base_meta, "epoch": step // steps_per_epoch, "complete": step >= total}
        if callable(extra_state):
            m["extra"] = extra_state()
        return ckpt.save_checkpoint(
            out, step, model, full_config, m, state, cfg.keep_checkpoints, weights=weights
        )

    writer = _tensorboard(out, info)
    progress, task = _progress(cfg, info, total, step)
    window, last, last_path, seen, t0 = _Window(), {}, None, 0, time.perf_counter()
    epoch = step // steps_per_epoch
    batches = _EpochBatches(data, info, cfg.seed, per_step, steps_per_epoch)
    opts = loader_options(cfg, device)
    loader: DataLoader[Any] = DataLoader(
        data,  # type: ignore[arg-type]
        batch_sampler=batches,
        collate_fn=_Collate(collate, pin=opts["pin_memory"]),
        generator=torch.Generator().manual_seed(cfg.seed),
        **opts,
    )
    while step < total:
        batches.set_epoch(epoch, skip=step - epoch * steps_per_epoch)
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
