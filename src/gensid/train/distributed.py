"""Data-parallel training with PyTorch DDP, launched by ``torchrun`` (``gensid train --nproc N``).

Each process holds a full replica; every batch is split across the processes, DDP averages
the gradients, so N processes take the same optimisation steps as one process on the
whole batch (up to float summation order and dropout masks). Rank 0 alone validates,
logs and writes checkpoints; stop decisions are broadcast so all ranks leave together.
Backend: ``nccl`` on GPU, ``gloo`` on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_size()[0] == 0


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if rank_and_size()[1] == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, 0)
    return bool(value.item())


def replica_spread(model: nn.Module) -> float:
    """Largest absolute difference of any parameter between ranks (0.0 = in sync)."""
    if rank_and_size()[1] == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return float(max((g - gathered[0]).abs().max() for g in gathered))


class ObjectiveStep(nn.Module):
    """``model`` + objective as one module, so DDP sees the whole step as its forward."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch, progress: float) -> dict[str, torch.Tensor]:
        return self.objective(self.model, batch, progress)


def wrap(model: nn.Module, objective) -> nn.Module:
    """The step module, under DDP when running distributed."""
    step = ObjectiveStep(model, objective)
    if rank_and_size()[1] == 1:
        return step
    # joint models leave some parameters out of some steps (e.g. unused heads or embeddings)
    return nn.parallel.DistributedDataParallel(step, find_unused_parameters=getattr(model, "tokenizer", None) is not None)
