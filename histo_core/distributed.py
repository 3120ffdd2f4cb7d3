"""Multi-process training with torch.distributed (DDP): launched by ``torchrun`` or
``histo train --nproc N``; NCCL on GPUs, gloo on CPUs.

Only what DDP does not give for free lives here: a class-balanced sampler that shards
one weighted draw across ranks, and the all-gather that lets every rank compute the
validation AUC on the *whole* validation set (an AUC cannot be averaged across shards).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env(device_type: str) -> Context:
    """Join the process group described by torchrun's environment; single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class DistributedWeightedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, sharded across ranks.

    Every rank draws the same ``num_samples`` indices from a generator seeded with
    (seed, epoch), then keeps every ``world``-th one from its rank on: together the ranks
    see exactly the draw a single process would make, and a resumed run redraws the same
    epochs. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, weights: np.ndarray, ctx: Context, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.ctx, self.seed, self.epoch = ctx, seed, 0
        self.per_rank = len(weights) // ctx.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.ctx.world, replacement=True, generator=generator)
        return iter(draw[self.ctx.rank::self.ctx.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def all_sum(value: float, ctx: Context) -> float:
    """Sum of ``value`` over ranks (itself when not distributed)."""
    if not ctx.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor)


def gather_by_index(indices: np.ndarray, *arrays: np.ndarray, ctx: Context) -> tuple[np.ndarray, ...]:
    """Concatenate per-rank shards, drop the padding duplicates, restore dataset order."""
    if not ctx.active:
        return arrays
    shards: list[tuple[np.ndarray, ...]] = [None] * ctx.world  # type: ignore[list-item]
    dist.all_gather_object(shards, (indices, *arrays))
    all_indices = np.concatenate([s[0] for s in shards])
    _, first = np.unique(all_indices, return_index=True)
    order = first[np.argsort(all_indices[first])]
    return tuple(np.concatenate([s[k + 1] for s in shards])[order] for k in range(len(arrays)))


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
