"""The benchmark's stand-in for unseen slides must change stain only, reproducibly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from histo_core.data.synthetic import render_patch

_spec = importlib.util.spec_from_file_location("stain_shift", Path(__file__).parents[1] / "bench" / "stain_shift.py")
stain_shift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stain_shift)


def _patches(n: int = 16) -> np.ndarray:
    return np.stack([render_patch(seed=0, index=i, label=i % 2) for i in range(n)])


def test_restain_without_noise_returns_the_same_pixels():
    pixels = _patches()
    same = stain_shift.restain(pixels, np.random.default_rng(1), vector_noise=0.0, amount_range=0.0)
    assert same.dtype == np.uint8 and same.shape == pixels.shape
    assert np.abs(same.astype(int) - pixels).max() <= 1  # optical-density round trip, rounding only


def test_stain_shift_is_reproducible_and_gives_groups_different_stains():
    pixels = _patches(32)
    first, again = stain_shift.stain_shifted(pixels, groups=4, seed=3), stain_shift.stain_shifted(pixels, groups=4, seed=3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, stain_shift.stain_shifted(pixels, groups=4, seed=4))
    # each image's change in mean colour follows its group's stain, so the changes differ between images
    change = first.reshape(32, -1, 3).mean(1) - pixels.reshape(32, -1, 3).mean(1)
    assert np.abs(change).mean() > 3
    assert change.std(axis=0).max() > 2
    # the structure stays: re-staining is a per-pixel colour map, so dark stays dark within each image
    for before, after in zip(pixels, first):
        grey_before, grey_after = before.mean(-1).ravel(), after.mean(-1).ravel()
        assert np.corrcoef(grey_before, grey_after)[0, 1] > 0.8
