"""Stain normalisation at test time: a new lab's H&E colours mapped onto the training stain's.

A model trained on one lab's stain ranks another lab's patches worse (``augmentation.py
--hold-out-stain``). Re-estimating BatchNorm's statistics on the new lab's images
(``--adapt`` there) recovers part of that, but the statistics also carry the images'
tumour fraction, so the operating point moves with it. This bench measures the colour-only
alternative, which needs no labels either and sees only colour:

1. each patch's haematoxylin and eosin optical-density (OD) vectors by Macenko et al.'s
   method (*A method for normalizing histology slides for quantitative analysis*, ISBI
   2009): the plane of the two largest principal directions of its tissue pixels' OD, and
   the directions at that plane's 1st and 99th percentile angles;
2. the median of those vectors over the training images (the reference) and over the
   images to score (the lab): one estimate per lab, since a 96x96 patch alone is too
   few pixels to estimate its stain reliably;
3. one 3x3 map in OD space per lab, from ``[H, E, H x E]`` of the lab to the same of the
   reference: each pixel's stain amounts and its residual (what H and E do not explain)
   are kept; only the stains' colours change. ``--project`` also scores the projection
   onto the reference's H and E alone (the residual dropped, as Macenko's method does).

For each trained variant of ``augmentation.py`` (in ``--out``, with the
``--hold-out-stain`` it was trained with) it prints the held-out group's AUC without and
with TTA, mapped and as the variant scored it; the sensitivity and specificity at the
threshold the variant recorded on validation; the validation images mapped with their own
estimate (no TTA; what the map costs where nothing changed); the lab estimated from 2,000
held-out images of 10% and of 90% tumour; and the map followed by BatchNorm adaptation.

    .venv/bin/python bench/stain_normalise.py --out DIR --hold-out-stain pink NAME [NAME ...]
    .venv/bin/python bench/stain_normalise.py --smoke   # seconds: 240 generated patches, 1 epoch

Its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from augmentation import GROUPS, TARGET_SENSITIVITY, held_out_parts, run, trained_variant, tumour_mixes
from quality import DEFAULT_DATA
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from histo_core.config import SMOKE_WIDTH
from histo_core.data.dataset import PatchDataset
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.evaluate import binary_metrics, threshold_for_sensitivity
from histo_core.inference import adapt_batchnorm, load_model, pick_device, score_dataset

LOG_256 = math.log(256)  # OD = log 256 - log(x + 1), as the training augmentation defines it
TISSUE_OD = 0.15  # Macenko's beta: a pixel is tissue where every channel's OD exceeds it
ANGLE_PERCENTILE = 0.01  # Macenko's alpha
MIN_TISSUE_PIXELS = 100


def optical_density(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> OD (B, 3, H*W)."""
    return LOG_256 - batch.reshape(len(batch), 3, -1).float().add(1).log()


def patch_stains(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's unit H and E OD vectors (B, 3, 2) by Macenko's method, and whether the
    patch had tissue enough to estimate them (B,)."""
    od = optical_density(batch)
    tissue = (od > TISSUE_OD).all(1)
    count = tissue.sum(1)
    weight = tissue[:, None].float()
    centred = (od - (od * weight).sum(2, keepdim=True) / count.clamp(min=1)[:, None, None]) * weight
    covariance = centred @ centred.transpose(1, 2) / (count.clamp(min=2) - 1)[:, None, None]
    plane = torch.linalg.eigh(covariance).eigenvectors[..., [2, 1]]  # the two largest directions
    plane = plane * torch.where(plane.sum(1, keepdim=True) < 0, -1.0, 1.0)  # into positive OD
    projected = plane.transpose(1, 2) @ od
    angle = torch.atan2(projected[:, 1], projected[:, 0]).masked_fill(~tissue, float("nan"))
    ends = torch.nanquantile(angle, torch.tensor([ANGLE_PERCENTILE, 1 - ANGLE_PERCENTILE]), dim=1)  # (2, B)
    first, second = ((plane @ torch.stack([end.cos(), end.sin()], 1)[..., None])[..., 0] for end in ends)
    first_is_h = (first[:, 0] > second[:, 0])[:, None]  # haematoxylin absorbs more red than eosin
    stains = torch.stack([torch.where(first_is_h, first, second), torch.where(first_is_h, second, first)], 2)
    stains = torch.nn.functional.normalize(stains, dim=1).abs()
    return stains, (count >= MIN_TISSUE_PIXELS) & torch.isfinite(stains).all(2).all(1)


def lab_stains(dataset: PatchDataset, batch_size: int = 512) -> torch.Tensor:
    """The median H and E OD vectors (3, 2) over a data set's patches with tissue enough."""
    estimates = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.indices[start:start + batch_size]
        stains, usable = patch_stains(torch.from_numpy(np.asarray(dataset.pixels[rows])).permute(0, 3, 1, 2))
        estimates.append(stains[usable])
    every = torch.cat(estimates)
    if not len(every):
        raise SystemExit(f"none of the {len(dataset)} patches has tissue enough to estimate its stain")
    return torch.nn.functional.normalize(every.median(0).values, dim=0)


def _basis(stains: torch.Tensor) -> torch.Tensor:
    """[H, E, H x E] (3, 3): a basis of OD space in which the third axis is what the stains
    do not explain."""
    return torch.cat([stains, torch.nn.functional.normalize(torch.linalg.cross(stains[:, 0], stains[:, 1]), dim=0)[:, None]], 1)


class StainMap:
    """A uint8 (B, 3, H, W) transform: the ``lab``'s stain colours replaced by the
    ``reference``'s in OD space; with ``project``, OD is projected onto the reference's
    H and E alone. Deterministic, so ``PatchDataset`` applies it as it would augmentation."""

    def __init__(self, lab: torch.Tensor, reference: torch.Tensor, project: bool = False) -> None:
        self.matrix = reference @ torch.linalg.pinv(lab) if project else _basis(reference) @ torch.linalg.inv(_basis(lab))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        mapped = LOG_256 - self.matrix @ optical_density(batch)
        return mapped.exp_().sub_(1).clamp_(0, 255).round_().to(torch.uint8).reshape(batch.shape)


def mapped(dataset: PatchDataset, transform: StainMap) -> PatchDataset:
    return PatchDataset(dataset.pixels, dataset.labels, dataset.indices, transform)


def describe(stains: torch.Tensor) -> str:
    return f"H ({', '.join(f'{v:.3f}' for v in stains[:, 0])}), E ({', '.join(f'{v:.3f}' for v in stains[:, 1])})"


def normalise(args: argparse.Namespace, minimum: int = 256) -> None:
    """Score each variant's held-out group (the test partition without a hold-out) with the
    lab's stain mapped onto the training images'."""
    kept = {name: trained_variant(args, name)[1] for name in args.names}  # checked before the stains are estimated
    parts = held_out_parts(args)
    train, val, held = parts["train"], parts["val"], parts["held_out"]
    reference, lab = lab_stains(train), lab_stains(held)
    print(f"training stain {describe(reference)}; held-out {describe(lab)}", flush=True)
    labels = held.labels[held.indices]
    mix_indices = tumour_mixes(held)
    mixes = {mix: lab_stains(PatchDataset(held.pixels, held.labels, indices)) for mix, indices in mix_indices.items()}
    print("the held-out lab estimated from " + "; ".join(f"{len(mix_indices[mix])} images of {mix}: {describe(stains)}"
                                                         for mix, stains in mixes.items()), flush=True)
    val_lab = lab_stains(val)
    device = pick_device()
    variants = {"mapped": StainMap(lab, reference)}
    if args.project:
        variants["projected"] = StainMap(lab, reference, project=True)
    part = "held_out_stain" if args.hold_out_stain else "test"
    for name, trained in kept.items():
        recorded = {tta: threshold_for_sensitivity(trained["labels_val"], trained[f"val_auc{tta}"], TARGET_SENSITIVITY)
                    for tta in ("", "_tta")}
        net = load_model(args.out / name / "best.pt", device)
        as_trained = binary_metrics(labels, trained[f"{part}_auc_tta"], recorded["_tta"])
        print(f"{name} held-out as trained: AUC {roc_auc_score(labels, trained[f'{part}_auc']):.4f} / "
              f"{roc_auc_score(labels, trained[f'{part}_auc_tta']):.4f} with TTA; at the recorded threshold (TTA) "
              f"{point(as_trained)}", flush=True)
        for kind, transform in variants.items():
            plain, tta = (scored(net, mapped(held, transform), device, with_tta, recorded) for with_tta in (False, True))
            own = StainMap(val_lab, reference, project=kind == "projected")
            print(f"{name} held-out {kind}: AUC {plain[0]:.4f} / {tta[0]:.4f} with TTA; at the recorded threshold "
                  f"(TTA) {point(tta[1])}; validation {kind} with its own estimate: AUC "
                  f"{scored(net, mapped(val, own), device, False, recorded)[0]:.4f} "
                  f"(as trained {roc_auc_score(trained['labels_val'], trained['val_auc']):.4f})", flush=True)
        for mix, stains in mixes.items():
            auc, at = scored(net, mapped(held, StainMap(stains, reference)), device, False, recorded)
            print(f"{name} held-out mapped from the {mix} estimate: AUC {auc:.4f}; at the recorded threshold (no TTA) "
                  f"{point(at)}", flush=True)
        adapt_batchnorm(net, DataLoader(mapped(held, variants["mapped"]), 256), device, minimum)
        plain, tta = (scored(net, mapped(held, variants["mapped"]), device, with_tta, recorded) for with_tta in (False, True))
        print(f"{name} held-out mapped, then BatchNorm adapted to it: AUC {plain[0]:.4f} / {tta[0]:.4f} with TTA; "
              f"at the recorded threshold (TTA) {point(tta[1])}", flush=True)


def scored(net: torch.nn.Module, dataset: PatchDataset, device: torch.device, tta: bool,
           thresholds: dict[str, float]) -> tuple[float, dict[str, float]]:
    """AUC, and the metrics at the recorded validation threshold of the same kind (TTA or not)."""
    logits = score_dataset(net, dataset, device, tta)[0]
    truth = dataset.labels[dataset.indices]
    return roc_auc_score(truth, logits), binary_metrics(truth, logits, thresholds["_tta" if tta else ""])


def point(at: dict[str, float]) -> str:
    return f"sensitivity {at['sensitivity']:.4f}, specificity {at['specificity']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", metavar="NAME", help="variants trained by augmentation.py in --out")
    parser.add_argument("--out", type=Path, default=Path("bench-out/augmentation"))
    parser.add_argument("--hold-out-stain", choices=GROUPS, help="the group the variants were trained without")
    parser.add_argument("--project", action="store_true", help="also score the projection onto H and E alone")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, help="a split folder made earlier from --data (see augmentation.py)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 240 generated patches, 1 epoch, a narrow network")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            args.data = write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=240, seed=6))
            args.out, args.names, args.project = Path(tmp) / "out", ["smoke"], True
            run(argparse.Namespace(**vars(args), name="smoke", epochs=1, threads=0, prepare=False,
                                   overrides=[f"width={SMOKE_WIDTH}"]))
            normalise(args, minimum=1)  # the test partition stands in for a held-out group
        return
    if not args.names:
        parser.error("name at least one variant trained by augmentation.py in --out")
    normalise(args)


if __name__ == "__main__":
    main()
