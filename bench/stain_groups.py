"""A real stain shift inside the shared patches: their two staining groups.

The shared PCam patches carry no slide ids, but their stain does tell two populations
apart. Averaged over each patch's tissue pixels, the direction of the optical-density
(OD) vector is clearly bimodal in its blue component: a minority of deep purple
patches, the rest pale pink-brown, with few in between (the README gives the figures;
this script and ``augmentation.py --prepare`` print them). Looked at side by side these
are two staining protocols, as between the two Camelyon16 hospitals. Training on one
group and scoring the other is a shift between real labs, not a simulated one: much
harsher than new slides from labs seen in training, but it ranks augmentations by how
well they carry a model across stains.

    .venv/bin/python bench/stain_groups.py [DATA]    # default: ../shared/data/pcam_real
    .venv/bin/python bench/stain_groups.py --smoke   # seconds: 64 generated patches
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"

GROUPS = ("purple", "pink")
NO_TISSUE = -1


def tissue_od_direction(pixels: np.ndarray, min_tissue: int = 200, chunk: int = 1024) -> np.ndarray:
    """Unit mean optical-density vector (R, G, B) of each uint8 ``(N, H, W, 3)`` patch's tissue
    pixels (OD summed over channels > 0.3, i.e. not white background); NaN for patches with
    fewer than ``min_tissue`` such pixels."""
    out = np.full((len(pixels), 3), np.nan, dtype=np.float32)
    for start in range(0, len(pixels), chunk):
        block = np.asarray(pixels[start:start + chunk], dtype=np.float32)
        od = -np.log((block + 1) / 256).reshape(len(block), -1, 3)
        tissue = od.sum(2) > 0.3
        counts = tissue.sum(1)
        mean = (od * tissue[..., None]).sum(1) / np.maximum(counts, 1)[:, None]
        unit = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-6)
        out[start:start + chunk] = np.where((counts >= min_tissue)[:, None], unit, np.nan)
    return out


def stain_groups(pixels: np.ndarray) -> np.ndarray:
    """0 (``purple``) or 1 (``pink``) per patch, by two-means on the blue OD direction;
    ``NO_TISSUE`` where a patch has too little tissue to tell."""
    blue = tissue_od_direction(pixels)[:, 2]
    has_tissue = ~np.isnan(blue)
    centres = KMeans(2, n_init=10, random_state=0).fit(blue[has_tissue, None]).cluster_centers_.ravel()
    threshold = centres.mean()
    return np.where(has_tissue, (blue > threshold).astype(np.int8), NO_TISSUE).astype(np.int8)


def describe(pixels: np.ndarray, groups: np.ndarray) -> str:
    """Each group's size and median blue OD direction, the figures the module docstring quotes."""
    blue = tissue_od_direction(pixels)[:, 2]
    parts = [f"{name}: {np.sum(groups == g):,} patches, median blue OD direction {np.median(blue[groups == g]):.2f}"
             for g, name in enumerate(GROUPS)]
    return "; ".join(parts + [f"too little tissue to tell: {np.sum(groups == NO_TISSUE)}"])


def load_pixels(data: Path | None) -> np.ndarray:
    """(N, 96, 96, 3) uint8 patches of a data root; 64 generated ones when ``data`` is None."""
    if data is None:
        from histo_core.data.synthetic import render_patch

        return np.stack([render_patch(7, i, i % 2) for i in range(64)])
    from PIL import Image

    from histo_core.data.sources import list_images

    paths = [p for p in list_images(data)["path"] if p]
    if not paths:
        raise SystemExit(f"{data}: no images")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def pixels_from_command_line(description: str) -> np.ndarray:
    """The patches a stain bench looks at: ``[DATA]`` (default: the shared real patches),
    or 64 generated ones with ``--smoke``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA)
    parser.add_argument("--smoke", action="store_true", help="seconds: 64 generated patches")
    args = parser.parse_args()
    return load_pixels(None if args.smoke else args.data)


def main() -> None:
    pixels = pixels_from_command_line(__doc__.split("\n\n")[0])
    print(f"{len(pixels)} patches: {describe(pixels, stain_groups(pixels))}")


if __name__ == "__main__":
    main()
