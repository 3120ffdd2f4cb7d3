"""Deterministic H&E-like sample patches, so the pipeline runs end to end with no download.

The generator follows the optical-density (Beer-Lambert) model of H&E staining: each
pixel's colour is ``255 * exp(-(c_H * h + c_E * e))`` for a haematoxylin and an eosin
stain vector. Slide-to-slide stain variation, tissue density and background gaps vary
per patch and independently of the label, so the label cannot be read off the mean
colour; what separates the classes is the *shape* of the nuclei in the centre 32x32
region, as in PatchCamelyon:

* label 0: stroma with small round lymphocyte nuclei; in some patches clusters of
  large tumour-like nuclei appear **outside** the centre (still label 0 by the PCam
  definition, so a model must look at the right place);
* label 1: large, dense, dark and irregular nuclei inside the centre 32x32 region.

Each patch depends only on ``(seed, index)``, so generating more patches never changes
the earlier ones, and two calls with the same arguments write identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PATCH_SIZE = 96
CENTRE = slice(32, 64)

# Reference stain optical-density vectors (Ruifrok & Johnston), normalised to unit length.
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``count`` patches with about ``tumour_fraction`` of label 1."""

    count: int = 2000
    seed: int = 0
    tumour_fraction: float = 0.4
    label_noise: float = 0.02
    id_prefix: str = "syn"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((PATCH_SIZE, PATCH_SIZE), Image.BILINEAR)
    return np.asarray(img)


def _stamp_nucleus(
    density: np.ndarray,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    radius: float,
    elongation: float,
    irregularity: float,
    strength: float,
) -> None:
    """Add one nucleus (an irregular ellipse with chromatin texture) to the density map."""
    half = int(np.ceil(radius * max(1.0, elongation) * (1 + irregularity))) + 1
    y0, y1 = max(0, int(cy) - half), min(PATCH_SIZE, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(PATCH_SIZE, int(cx) + half + 1)
    if y0 >= y1 or x0 >= x1:
        return
    # A column and a row, broadcast: the same per-pixel arithmetic as a full grid, without one.
    dy, dx = np.arange(y0, y1)[:, None] - cy, np.arange(x0, x1)[None, :] - cx
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    theta = np.arctan2(v, u)
    # A wobbly boundary: a few harmonics with random phase make the outline irregular.
    wobble = 1 + irregularity * (
        0.6 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
        + 0.4 * np.cos(5 * theta + rng.uniform(0, 2 * np.pi))
    )
    r = np.sqrt((u / (radius * elongation)) ** 2 + (v / radius) ** 2)
    inside = np.clip((wobble - r) * radius, 0, 1)  # anti-aliased edge, ~1 px wide
    chromatin = 0.75 + 0.5 * rng.random(inside.shape)
    np.maximum(density[y0:y1, x0:x1], strength * inside * chromatin, out=density[y0:y1, x0:x1])


def _scatter(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, 2))


def render_patch(seed: int, index: int, label: int) -> np.ndarray:
    """Render one (96, 96, 3) uint8 patch for ``label``; depends only on the arguments."""
    rng = np.random.default_rng([seed, index, label])

    # Slide-level stain variation: jitter both stain vectors and their overall strength.
    h_vec = _unit(_HAEMATOXYLIN + rng.normal(0, 0.06, 3).clip(-0.2, 0.2))
    e_vec = _unit(_EOSIN + rng.normal(0, 0.06, 3).clip(-0.2, 0.2))
    h_scale = rng.uniform(0.6, 1.4)
    e_scale = rng.uniform(0.5, 1.3)

    # Tissue: eosin-stained stroma with texture, and white gaps (fat / background).
    texture = _smooth_noise(rng, rng.integers(4, 12))
    tissue = (texture > rng.uniform(0.0, 0.45)).astype(np.float32)
    eosin = e_scale * tissue * (0.25 + 0.35 * _smooth_noise(rng, 16))
    haem = np.zeros((PATCH_SIZE, PATCH_SIZE), dtype=np.float32)

    # Lymphocytes everywhere, at a density that varies a lot between patches.
    n_lymph = int(rng.integers(5, 140))
    for cy, cx in _scatter(rng, n_lymph, 0, PATCH_SIZE):
        _stamp_nucleus(haem, rng, cy, cx, rng.uniform(1.8, 3.2), rng.uniform(1.0, 1.25),
                       0.05, rng.uniform(0.9, 1.6))

    # Tumour nuclei: larger, darker, irregular. Some tumour patches are subtle (a single
    # mildly enlarged nucleus), as in real data, so the task is learnable but not trivial.
    subtle = rng.random() < 0.25
    n_tumour = int(rng.integers(1, 3)) if subtle else int(rng.integers(3, 8))
    radii = (3.2, 4.5) if subtle else (4.0, 7.5)
    if label == 1:
        centres = _scatter(rng, n_tumour, CENTRE.start + 2, CENTRE.stop - 2)
    elif rng.random() < 0.3:
        # Tumour cells near a corner only: label 0 under the centre-region rule.
        corner = rng.integers(0, 2, size=2) * (PATCH_SIZE - 22)
        centres = corner + _scatter(rng, n_tumour, 2, 20)
    else:
        centres = np.empty((0, 2))
    for cy, cx in centres:
        _stamp_nucleus(haem, rng, cy, cx, rng.uniform(*radii), rng.uniform(1.0, 1.8),
                       rng.uniform(0.15, 0.35), rng.uniform(1.2, 2.0))

    od = h_scale * haem[..., None] * h_vec + eosin[..., None] * e_vec
    od += rng.normal(0, 0.02, od.shape)  # sensor noise
    rgb = 255.0 * np.exp(-np.clip(od, 0, None))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def generate_labels(spec: SyntheticSpec) -> pd.DataFrame:
    """``id, label, true_label`` for ``spec``; ids are stable: ``<prefix>_<seed>_<index>``.

    PCam has some label noise, and so does the sample data: the image is drawn from
    ``true_label``, while ``label`` (what the labels file says) is flipped for about
    ``label_noise`` of the rows.
    """
    rng = np.random.default_rng([spec.seed, 2**31 - 1])
    true_labels = (rng.random(spec.count) < spec.tumour_fraction).astype(int)
    flipped = rng.random(spec.count) < spec.label_noise
    ids = [f"{spec.id_prefix}_{spec.seed}_{i:06d}" for i in range(spec.count)]
    return pd.DataFrame(
        {"id": ids, "label": np.where(flipped, 1 - true_labels, true_labels), "true_label": true_labels}
    )


def write_kaggle_layout(root: Path | str, spec: SyntheticSpec) -> Path:
    """Write ``root/train/<id>.tif`` and ``root/train_labels.csv`` (the Kaggle layout).

    Refuses to write into a folder that already holds a labels file, because the
    pipeline treats data as append-only and must never overwrite what users gave it.
    """
    root = Path(root)
    labels_csv = root / "train_labels.csv"
    if labels_csv.exists():
        raise FileExistsError(f"{labels_csv} already exists; choose an empty folder for new data")
    (root / "train").mkdir(parents=True, exist_ok=True)
    table = generate_labels(spec)
    for index, (image_id, true_label) in enumerate(zip(table["id"], table["true_label"])):
        patch = render_patch(spec.seed, index, int(true_label))
        Image.fromarray(patch, mode="RGB").save(root / "train" / f"{image_id}.tif", format="TIFF")
    table[["id", "label"]].to_csv(labels_csv, index=False)
    return root
