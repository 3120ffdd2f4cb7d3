"""A stand-in for unseen slides: the test patches re-stained as if by other labs.

The shared patches carry no slide ids, so no split of them is slide-disjoint. What
mostly changes from one slide (and lab, and scanner) to the next is the stain: the hue
of haematoxylin and eosin themselves, and how much of each the tissue took up. This
module re-stains the test partition as ``groups`` "virtual labs": the images are cut
into groups, and each group gets its own stain *vectors* (the Ruifrok-Johnston
haematoxylin and eosin optical-density directions, each turned by random noise) and
its own stain amounts. The AUC is then computed over all groups pooled, as on a real
multi-slide hold-out, where a model whose scores move with the stain loses ranking
across slides.

The training augmentation (``RandomColourJitter``) now turns the stain vectors too
(``stain_vector_jitter``), so this is no longer a change the model has never seen: the
staining-group hold-out (``stain_groups.py``, a real shift between labs) is the stricter
check, and this one stays as a cheap second opinion.

    .venv/bin/python bench/stain_shift.py [DATA]     # how far the re-staining moves the colours
    .venv/bin/python bench/stain_shift.py --smoke    # seconds: 64 generated patches
"""

from __future__ import annotations

import numpy as np

from histo_core.data.dataset import RGB_FROM_HED as STAIN_MATRIX
from histo_core.data.dataset import PatchDataset

# Rows: haematoxylin, eosin, DAB optical-density directions (Ruifrok & Johnston 2001), as in training.
RGB_FROM_HED = np.array(STAIN_MATRIX)


def restain(pixels: np.ndarray, rng: np.random.Generator, vector_noise: float = 0.15,
            amount_range: float = 0.4) -> np.ndarray:
    """Re-stain uint8 ``(N, H, W, 3)`` patches with one random lab's stain vectors and amounts."""
    hed_from_rgb = np.linalg.inv(RGB_FROM_HED)
    od = -np.log((pixels.astype(np.float32) + 1) / 256)  # optical density per channel
    hed = od @ hed_from_rgb  # stain amounts per pixel
    target = RGB_FROM_HED.copy()
    target[:2] += rng.normal(0, vector_noise, size=(2, 3))  # turn the H and E vectors
    target[:2] = np.abs(target[:2]) / np.linalg.norm(target[:2], axis=1, keepdims=True)
    hed[..., :2] *= rng.uniform(1 - amount_range, 1 + amount_range, size=2)
    rgb = np.exp(-(hed @ target)) * 256 - 1
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def stain_shifted(pixels: np.ndarray, groups: int = 8, seed: int = 0) -> np.ndarray:
    """All of ``pixels`` re-stained, consecutive chunks as ``groups`` different labs (fixed seed)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    out = np.empty_like(pixels)
    for chunk in np.array_split(order, groups):
        out[chunk] = restain(pixels[chunk], rng)
    return out


def restained(dataset: PatchDataset) -> PatchDataset:
    """``dataset``'s patches and labels, re-stained by ``stain_shifted``."""
    return PatchDataset(stain_shifted(np.asarray(dataset.pixels[dataset.indices])),
                        dataset.labels[dataset.indices], np.arange(len(dataset)))


def main() -> None:
    from stain_groups import pixels_from_command_line, tissue_od_direction

    pixels = pixels_from_command_line(__doc__.split("\n\n")[0])
    before, after = tissue_od_direction(pixels), tissue_od_direction(stain_shifted(pixels))
    turned = np.degrees(np.arccos(np.clip(np.nansum(before * after, axis=1), -1, 1)))
    print(f"{len(pixels)} patches re-stained as 8 labs: mean tissue OD direction turned by "
          f"{np.nanmedian(turned):.1f} degrees (median), {np.nanpercentile(turned, 90):.1f} (90th percentile)")


if __name__ == "__main__":
    main()
