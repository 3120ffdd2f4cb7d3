"""The benchmark's staining groups must follow the stain, not the tissue or the label."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from histo_core.data.dataset import RGB_FROM_HED
from histo_core.data.synthetic import render_patch

_spec = importlib.util.spec_from_file_location("stain_groups", Path(__file__).parents[1] / "bench" / "stain_groups.py")
stain_groups = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stain_groups)


def _stained(pixels: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """``pixels`` with their stain amounts (Ruifrok-Johnston) recoloured by ``stains`` (rows: H, E, DAB)."""
    od = -np.log((pixels.astype(np.float64) + 1) / 256)
    rgb = np.exp(-(od @ np.linalg.inv(np.array(RGB_FROM_HED)) @ stains)) * 256 - 1
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_two_stain_recipes_fall_in_two_groups_whatever_the_label_and_blank_patches_in_none():
    patches = np.stack([render_patch(seed=1, index=i, label=i % 2) for i in range(40)])
    brown = np.array(RGB_FROM_HED, dtype=np.float64)
    brown[0], brown[1] = [0.45, 0.60, 0.66], [0.20, 0.80, 0.56]  # haematoxylin and eosin absorbing more blue
    brown[:2] /= np.linalg.norm(brown[:2], axis=1, keepdims=True)
    pixels = np.concatenate([_stained(patches[:20], np.array(RGB_FROM_HED)), _stained(patches[20:], brown),
                             np.full((2, 96, 96, 3), 250, dtype=np.uint8)])
    groups = stain_groups.stain_groups(pixels)
    assert (groups[:20] == stain_groups.GROUPS.index("purple")).all()
    assert (groups[20:40] == stain_groups.GROUPS.index("pink")).all()
    assert (groups[40:] == stain_groups.NO_TISSUE).all()


def test_colour_clusters_follow_the_stain_recipe_and_its_strength():
    patches = np.stack([render_patch(seed=2, index=i, label=i % 2) for i in range(40)])
    brown = np.array(RGB_FROM_HED, dtype=np.float64)
    brown[0], brown[1] = [0.45, 0.60, 0.66], [0.20, 0.80, 0.56]
    brown[:2] /= np.linalg.norm(brown[:2], axis=1, keepdims=True)
    recipes = [np.array(RGB_FROM_HED), brown]
    # Four lots of ten: each recipe as it is and three times as strong.
    pixels = np.concatenate([_stained(patches[10 * i:10 * (i + 1)], recipes[i % 2] * (1 if i < 2 else 3))
                             for i in range(4)])
    clusters = stain_groups.colour_clusters(pixels, 4)
    lots = [set(clusters[10 * i:10 * (i + 1)]) for i in range(4)]
    assert all(len(lot) == 1 for lot in lots) and len(set.union(*lots)) == 4, lots


def test_more_colour_clusters_than_patches_with_tissue_is_a_clear_error():
    patches = np.stack([render_patch(seed=2, index=i, label=i % 2) for i in range(3)])
    blank = np.full((2, 96, 96, 3), 255, dtype=np.uint8)
    with pytest.raises(SystemExit, match="4 colour clusters asked for, but only 3 of 5 patches have enough tissue"):
        stain_groups.colour_clusters(np.concatenate([patches, blank]), 4)
