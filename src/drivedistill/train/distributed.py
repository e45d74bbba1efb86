"""Data-parallel training under `torchrun`: process group, device, and the DDP / FSDP2 wrapper.

    torchrun --nproc_per_node=2 -m drivedistill.cli train --student transfuser --data STORE --out RUN
    torchrun --nproc_per_node=8 -m drivedistill.cli train ... --train.strategy=fsdp --train.precision=bf16

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything is a single process and the
strategy is ignored. Backend: NCCL on GPUs, gloo on CPUs. Rank 0 alone writes checkpoints and logs.

Two strategies (`--train.strategy`), both synchronising trainable parameters only — the parameters and
buffers of frozen teachers (`Method.frozen()`) are never wrapped, broadcast, sharded or all-reduced:

- `ddp`: every rank holds all weights; gradients are all-reduced (DistributedDataParallel).
- `fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`): trainable parameters, their gradients
  and the AdamW state are sharded over ranks along dim 0 (DTensors); each element of an `nn.ModuleList`
  in a trainable subtree (a transformer's layers) is its own unit, gathered just for its forward and
  backward, and the root unit holds the remaining trainable parameters (frozen ones are passed as
  `ignored_params`). Checkpoints keep the single-process layout: `full_state` / `full_optimizer_state`
  gather full tensors on every rank for rank 0 to save, `shard_optimizer_state` cuts a full optimiser
  state back into this rank's shards on resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from drivedistill.train.checkpoint import frozen_prefixes
from drivedistill.utils.runtime import select_device

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; `device` is its torch device string."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if launched by it (idempotent); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device)
    if dev == "cuda" and world > 1:
        dev = f"cuda:{local}"
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class LossForward(nn.Module):
    """Routes `forward(batch)` to `model.losses(batch)`, so that DDP's / FSDP's hooks see the loss computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: object) -> dict[str, torch.Tensor]:
        return self.model.losses(batch)  # type: ignore[operator,no-any-return]


def _frozen_names(module: nn.Module, prefixes: list[str]) -> list[str]:
    names = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
    return [k for k in names if any(k.startswith(p) for p in prefixes)]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The submodules of `model` FSDP shards as their own units (besides the root): every element of an
    `nn.ModuleList` that holds trainable parameters and contains no frozen module, innermost first."""
    frozen = {id(m) for m in getattr(model, "frozen", list)()}
    frozen_inside: dict[int, bool] = {}

    def has_frozen(m: nn.Module) -> bool:
        if id(m) not in frozen_inside:
            frozen_inside[id(m)] = id(m) in frozen or any(has_frozen(c) for c in m.children())
        return frozen_inside[id(m)]

    units = []
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList):
            units += [c for c in m if not has_frozen(c) and any(p.requires_grad for p in c.parameters())]
    return units[::-1]  # named_modules is pre-order: reversed, nested lists are sharded before their parents


def broadcast_trainable(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's trainable parameters and buffers to every rank (what DDP does at construction)."""
    if not info.distributed:
        return
    skip = frozen_prefixes(model)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not any(name.startswith(p) for p in skip):
                dist.broadcast(t.data, src=0)


def wrap(
    model: nn.Module, info: DistInfo, find_unused_parameters: bool = False, strategy: Strategy = "ddp"
) -> nn.Module:
    """`LossForward(model)`: DDP-wrapped or FSDP2-sharded when distributed, frozen modules left alone.

    FSDP shards `model`'s parameters in place (they become DTensors): build the optimiser after this call.
    """
    module = LossForward(model)
    if not info.distributed:
        return module
    prefixes = [f"model.{p}" for p in frozen_prefixes(model)]
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        broadcast_trainable(model, info)
        frozen = {p for m in getattr(model, "frozen", list)() for p in m.parameters()}
        for unit in fsdp_units(model):
            fully_shard(unit)
        fully_shard(module, ignored_params=frozen)
        return module
    if strategy != "ddp":
        raise ValueError(f"train.strategy={strategy!r}: use 'ddp' or 'fsdp'")
    from torch.nn.parallel import DistributedDataParallel as DDP

    DDP._set_params_and_buffers_to_ignore_for_model(module, _frozen_names(module, prefixes))
    device_ids = [info.local_rank] if info.device.startswith("cuda") else None
    return DDP(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def _full(t: Any) -> Any:
    """A DTensor's full value (an all-gather: every rank must call); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """`checkpoint.trainable_state(model)` with sharded (FSDP) parameters gathered: call on every rank.
    Tensors are gathered one at a time and copied to CPU only where `keep` (rank 0): the others return {}
    (host memory for the full state is needed on one rank only)."""
    skip = frozen_prefixes(model)
    out = {}
    for k, v in model.state_dict().items():
        if not any(k.startswith(p) for p in skip):
            full = _full(v)
            if keep:
                out[k] = full.detach().to("cpu", copy=True).contiguous()
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded state tensors gathered (CPU copies): call on every rank;
    {} where not `keep`. Same structure as an unsharded optimiser's, so single-process, DDP and FSDP
    checkpoints agree."""
    sd = optimizer.state_dict()
    state: dict[Any, Any] = {}
    for i, s in sd["state"].items():
        entry = {}
        for k, v in s.items():
            full = _full(v) if torch.is_tensor(v) else v
            entry[k] = full.detach().to("cpu", copy=True) if keep and torch.is_tensor(full) else full
        state[i] = entry
    return {**sd, "state": state} if keep else {}


def shard_optimizer_state(full: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A full optimiser state (`full_optimizer_state`) cut into this rank's shards of `optimizer`'s
    DTensor parameters (no communication: each rank keeps its chunk); unsharded parameters keep theirs."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[Any, Any] = {}
    for i, s in full["state"].items():
        p = params[int(i)]
        state[i] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape
            else v
            for k, v in s.items()
        }
    return {**full, "state": state}


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `t` over ranks (identity in a single process)."""
    if not info.distributed:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / info.world_size
