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

Finer colour groups are no slide proxy here: ``--clusters K`` splits the patches by
k-means on their tissue colour (OD direction and strength) and prints each cluster's
share of tumour patches, which runs from almost none to most (docs/benchmarks.md). A
patch's colour says what tissue it shows as much as which slide it is from, so holding
out colour clusters would hold out kinds of tissue. The two staining groups are the one
split of these patches that follows the lab.

    .venv/bin/python bench/stain_groups.py [DATA]    # default: ../shared/data/pcam_real
    .venv/bin/python bench/stain_groups.py --clusters 16 [DATA]
    .venv/bin/python bench/stain_groups.py --smoke   # seconds: 64 generated patches
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"

GROUPS = ("purple", "pink")
NO_TISSUE = -1


def tissue_od(pixels: np.ndarray, min_tissue: int = 200, chunk: int = 1024) -> np.ndarray:
    """Mean optical-density vector (R, G, B) of each uint8 ``(N, H, W, 3)`` patch's tissue
    pixels (OD summed over channels > 0.3, i.e. not white background); NaN for patches with
    fewer than ``min_tissue`` such pixels."""
    out = np.full((len(pixels), 3), np.nan, dtype=np.float32)
    for start in range(0, len(pixels), chunk):
        block = np.asarray(pixels[start:start + chunk], dtype=np.float32)
        od = -np.log((block + 1) / 256).reshape(len(block), -1, 3)
        tissue = od.sum(2) > 0.3
        counts = tissue.sum(1)
        mean = (od * tissue[..., None]).sum(1) / np.maximum(counts, 1)[:, None]
        out[start:start + chunk] = np.where((counts >= min_tissue)[:, None], mean, np.nan)
    return out


def tissue_od_direction(pixels: np.ndarray) -> np.ndarray:
    """``tissue_od`` as a unit vector: the stain's hue, whatever its strength."""
    mean = tissue_od(pixels)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-6)


def stain_groups(pixels: np.ndarray) -> np.ndarray:
    """0 (``purple``) or 1 (``pink``) per patch, by two-means on the blue OD direction;
    ``NO_TISSUE`` where a patch has too little tissue to tell."""
    blue = tissue_od_direction(pixels)[:, 2]
    has_tissue = ~np.isnan(blue)
    centres = KMeans(2, n_init=10, random_state=0).fit(blue[has_tissue, None]).cluster_centers_.ravel()
    threshold = centres.mean()
    return np.where(has_tissue, (blue > threshold).astype(np.int8), NO_TISSUE).astype(np.int8)


def colour_clusters(pixels: np.ndarray, k: int) -> np.ndarray:
    """Cluster (0 .. k-1) of each patch by k-means on its tissue colour: the OD direction
    and the log of its strength, standardised; ``NO_TISSUE`` where there is too little.
    Fewer patches with tissue than ``k`` ends the bench with that reason (exit 1)."""
    mean = tissue_od(pixels)
    has_tissue = ~np.isnan(mean[:, 0])
    if has_tissue.sum() < k:
        raise SystemExit(f"{k} colour clusters asked for, but only {has_tissue.sum()} of {len(pixels)} "
                         f"patches have enough tissue to cluster")
    strength = np.linalg.norm(mean[has_tissue], axis=1, keepdims=True)
    features = np.hstack([mean[has_tissue] / strength, np.log(strength)])
    features = (features - features.mean(0)) / features.std(0)
    clusters = np.full(len(pixels), NO_TISSUE, dtype=np.int16)
    clusters[has_tissue] = KMeans(k, n_init=10, random_state=0).fit(features).labels_
    return clusters


def describe_clusters(clusters: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> str:
    """One line per colour cluster: its size, its share of label 1 and of the purple group."""
    labelled, lines, shares = labels >= 0, [], []
    for c in range(clusters.max() + 1):
        member = clusters == c
        shares.append(labels[member & labelled].mean())
        lines.append(f"cluster {c}: {member.sum():,} patches, label 1 {shares[-1]:.2f}, "
                     f"purple {np.mean(groups[member] == GROUPS.index('purple')):.2f}")
    return "\n".join(lines + [f"label 1 share by cluster: {min(shares):.2f} to {max(shares):.2f} "
                              f"(all patches: {labels[(clusters != NO_TISSUE) & labelled].mean():.2f})"])


def describe(pixels: np.ndarray, groups: np.ndarray) -> str:
    """Each group's size and median blue OD direction, the figures the module docstring quotes."""
    blue = tissue_od_direction(pixels)[:, 2]
    parts = [f"{name}: {np.sum(groups == g):,} patches, median blue OD direction {np.median(blue[groups == g]):.2f}"
             for g, name in enumerate(GROUPS)]
    return "; ".join(parts + [f"too little tissue to tell: {np.sum(groups == NO_TISSUE)}"])


def load_patches(data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 96, 96, 3) uint8 patches of a data root and their labels (-1: none); 64
    generated ones when ``data`` is None."""
    if data is None:
        from histo_core.data.synthetic import render_patch

        labels = np.arange(64) % 2
        return np.stack([render_patch(7, i, label) for i, label in enumerate(labels)]), labels
    from PIL import Image

    from histo_core.data.sources import list_images

    table = list_images(data)
    table = table[table["path"].astype(bool)]
    if table.empty:
        raise SystemExit(f"{data}: no images")
    labels = pd.to_numeric(table["label"], errors="coerce").fillna(-1).astype(int).to_numpy()
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in table["path"]]), labels


def _cluster_count(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of clusters, 2 or more")
    return int(text)


def command_line(description: str, clusters: bool = False) -> argparse.Namespace:
    """``[DATA]`` (default: the shared real patches) or ``--smoke`` (64 generated patches),
    and ``--clusters K`` where asked for."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA)
    parser.add_argument("--smoke", action="store_true", help="seconds: 64 generated patches")
    if clusters:
        parser.add_argument("--clusters", type=_cluster_count, metavar="K", help="also split by colour into K clusters and "
                                                                      "print each one's share of tumour patches")
    return parser.parse_args()


def pixels_from_command_line(description: str) -> np.ndarray:
    """The patches a stain bench looks at (see ``command_line``)."""
    args = command_line(description)
    return load_patches(None if args.smoke else args.data)[0]


def main() -> None:
    args = command_line(__doc__.split("\n\n")[0], clusters=True)
    pixels, labels = load_patches(None if args.smoke else args.data)
    groups = stain_groups(pixels)
    print(f"{len(pixels)} patches: {describe(pixels, groups)}")
    if args.clusters or args.smoke:
        print(describe_clusters(colour_clusters(pixels, args.clusters or 4), labels, groups))


if __name__ == "__main__":
    main()
