"""Multi-GPU training at one site with DistributedDataParallel under ``torchrun``.

A hospital with several GPUs launches its client with ``torchrun --nproc-per-node N``;
:func:`init_from_env` joins the process group, and :func:`models.training.train` then
wraps the model in DDP and shards the data with a DistributedSampler. Only rank 0 should
talk to the coordinator (:func:`is_primary`). With ``WORLD_SIZE`` unset or 1 everything
here is a no-op, so the same code runs on a laptop CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistributedEnv:
    """Rank layout announced by ``torchrun`` through environment variables."""

    rank: int
    local_rank: int
    world_size: int


def env_from_os() -> DistributedEnv:
    """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (defaults: one process)."""
    return DistributedEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def init_from_env(backend: str | None = None) -> DistributedEnv:
    """Join the process group when ``WORLD_SIZE > 1`` and pin this rank to its GPU.

    NCCL is used on CUDA, gloo on CPU (useful for tests). Returns the rank layout.
    """
    env = env_from_os()
    if env.world_size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return env


def is_active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_primary() -> bool:
    """True on the rank that reports to the coordinator (rank 0, or a single process)."""
    return not is_active() or dist.get_rank() == 0


def prepare(
    model: nn.Module, dataset: Dataset[Any], *, seed: int
) -> tuple[nn.Module, DistributedSampler[Any] | None]:
    """Return the module to step and a sampler: DDP + DistributedSampler when active.

    The caller keeps its unwrapped ``model``; DDP shares its parameters, so weights read
    after training are the synchronised ones.
    """
    if not is_active():
        return model, None
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, shuffle=True, seed=seed)
    return wrapped, sampler


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars over ranks (identity when not distributed), for global train metrics."""
    if not is_active():
        return values
    if dist.get_backend() != "nccl":
        device = torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm statistics) over ranks, in place.

    DDP keeps parameters identical but each rank updates its buffers from its own
    shard, so after training they are averaged to give every rank the same state.
    """
    if not is_active():
        return
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            on_wire = buffer if dist.get_backend() == "nccl" else buffer.cpu()
            dist.all_reduce(on_wire, op=dist.ReduceOp.SUM)
            buffer.copy_(on_wire / world)
