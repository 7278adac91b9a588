"""torch.distributed set-up and parallelism applied from outside the model (torchtitan style).

The same training script runs single-process or under ``torchrun``: DDP (gloo on CPU, NCCL on GPU) or
FSDP2 (``fully_shard``). Models never import this module; the trainer applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun described in the environment; single-process otherwise."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not launched_by_torchrun():
        return DistInfo(device=torch.device("cuda") if use_cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


def shutdown() -> None:
    """Leave the process group together: a rank that tears gloo down while a peer is still finishing its
    last write can make that peer abort (SIGABRT) on a busy machine."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def apply_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = True) -> nn.Module:
    """Wrap for data parallelism. Unused-parameter search is on by default: a task mix with a zero-weight
    task skips that task's head, which DDP would otherwise wait for forever."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def apply_fsdp(model: nn.Module, units: list[nn.Module] | None = None) -> nn.Module:
    """Shard parameters with FSDP2: each unit (e.g. a transformer block) is one shard group, then the root."""
    from torch.distributed.fsdp import fully_shard

    for m in units or []:
        fully_shard(m)
    fully_shard(model)
    return model


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks stop together on a bad loss)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())
    return flag


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
