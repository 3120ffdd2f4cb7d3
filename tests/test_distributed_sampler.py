"""The class-balanced sampler of multi-process training: the ranks together draw exactly
the draw a single process makes, so N processes see the same epoch as one."""

from __future__ import annotations

import numpy as np
import pytest

from histo_core.distributed import Context, DistributedWeightedSampler
from histo_core.split import balanced_weights


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_together_draw_the_single_process_draw(world):
    labels = np.r_[np.zeros(80, int), np.ones(23, int)]  # 103 rows: not a multiple of any world
    weights = balanced_weights(labels)
    for epoch in (1, 2):
        single = DistributedWeightedSampler(weights, Context(), seed=7)
        single.set_epoch(epoch)
        shards = []
        for rank in range(world):
            sampler = DistributedWeightedSampler(weights, Context(rank=rank, world=world), seed=7)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert {len(s) for s in shards} == {len(labels) // world}
        interleaved = [index for step in zip(*shards) for index in step]
        assert interleaved == list(single)[:len(interleaved)]


def test_epochs_draw_differently_and_classes_come_out_balanced():
    labels = np.r_[np.zeros(900, int), np.ones(100, int)]
    sampler = DistributedWeightedSampler(balanced_weights(labels), Context(), seed=0)
    draws = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        draws.append(list(sampler))
    assert draws[0] != draws[1]
    assert 0.45 < labels[draws[0]].mean() < 0.55
