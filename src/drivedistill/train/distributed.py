"""Distributed data parallel under `torchrun`: process group, device, and the DDP wrapper.

    torchrun --nproc_per_node=2 -m drivedistill.cli train --student transfuser --data STORE --out RUN

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything is a single process.
Backend: NCCL on GPUs, gloo on CPUs. Only trainable parameters are synchronised: the parameters and
buffers of frozen teachers (`Method.frozen()`) are excluded from DDP, so they are neither broadcast
nor all-reduced. Rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from drivedistill.train.checkpoint import frozen_prefixes
from drivedistill.utils.runtime import select_device


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
    """Routes `forward(batch)` to `model.losses(batch)`, so that DDP's hooks see the loss computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: object) -> dict[str, torch.Tensor]:
        return self.model.losses(batch)  # type: ignore[operator,no-any-return]


def wrap(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """`LossForward(model)`, DDP-wrapped when distributed with frozen modules' tensors ignored."""
    module = LossForward(model)
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    prefixes = [f"model.{p}" for p in frozen_prefixes(model)]
    names = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
    ignored = [k for k in names if any(k.startswith(p) for p in prefixes)]
    DDP._set_params_and_buffers_to_ignore_for_model(module, ignored)
    device_ids = [info.local_rank] if info.device.startswith("cuda") else None
    return DDP(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `t` over ranks (identity in a single process)."""
    if not info.distributed:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / info.world_size
