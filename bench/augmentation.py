"""Compare training settings on in-distribution vs re-stained test AUC (short runs).

The shared test partition shares slides with the training images, so a setting that
only memorises those slides' stain looks best there. This trains one variant of
``TrainConfig`` (``--set key=value`` overrides, e.g. ``--set hed_jitter=0.1``) for a
short schedule on the shared real patches and prints its AUC on the test partition and
on the same partition re-stained as eight "virtual labs" (``stain_shift.py``), the
stand-in for unseen slides. Run variants side by side with ``--threads 1`` each.

With ``--hold-out-stain purple|pink`` it trains only on the other of the data's two
staining groups (``stain_groups.py``) and also scores every patch of the held-out group:
a real shift between labs. ``--prepare`` only validates, splits, decodes and groups,
so that variants started side by side afterwards share that work.

    .venv/bin/python bench/augmentation.py --name hed10 --set hed_jitter=0.1 [--epochs 10]
    .venv/bin/python bench/augmentation.py --name hed10-x --set hed_jitter=0.1 --hold-out-stain purple
    .venv/bin/python bench/augmentation.py --ensemble seed1 seed2   # the variants' mean logit, scored
    .venv/bin/python bench/augmentation.py --score-val seed1 --hold-out-stain pink   # an older run's val logits
    .venv/bin/python bench/augmentation.py --adapt seed1 --hold-out-stain pink   # BatchNorm adapted to the stain
    .venv/bin/python bench/augmentation.py --smoke    # seconds: 240 generated patches, 1 epoch

Each variant keeps its logits beside its result (``NAME-logits.npz``), so ``--ensemble``
scores several trained variants as one model (the mean of their logits, as TTA averages
views) without scoring any image again.

Besides the AUCs it gives each scored part's operating point with TTA, the figure a
pathologist would use: the sensitivity and specificity at the threshold that reaches
sensitivity 0.95 on the validation images (as a retrain chooses it; with
``--hold-out-stain`` the validation images are of the other group, so the threshold meets
a stain it was not chosen on), and the specificity where the part's own ROC curve reaches
sensitivity 0.95 (no threshold to carry over: the ranking alone). ``--score-val NAME``
adds the validation logits to a variant trained before they were kept.

``--adapt NAME`` scores a trained variant's held-out group again with its BatchNorm
statistics re-estimated on that group's images (``histo predict --adapt-to-data``), and the
validation images with theirs: AUC and operating points with TTA. The statistics also
carry the adapting images' tumour fraction, so it adapts once more on 2,000 of the held-out
images with 10% and with 90% tumour, scores all of them (without TTA), and prints where the
validation threshold then lands.

Its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from pathlib import Path

from stain_groups import GROUPS, describe, stain_groups
from stain_shift import restained

from histo_core import steps
from histo_core.config import SMOKE_WIDTH, SplitConfig, TrainConfig, ValidationConfig
from histo_core.data.cache import cache_key
from histo_core.data.dataset import PatchDataset
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.evaluate import binary_metrics, threshold_for_sensitivity
from histo_core.inference import MIN_ADAPT_IMAGES, adapt_batchnorm, load_model, pick_device, score_dataset
from histo_core.layout import DatasetDir, SplitDir
from histo_core.train import fit, format_epoch, training_augmentation
from quality import DEFAULT_DATA
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["hed_jitter=0.1"]`` -> ``{"hed_jitter": "0.1"}``; pydantic converts the values."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in TrainConfig.model_fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(TrainConfig.model_fields)}")
        overrides[key] = value
    return overrides


def groups_of(split: SplitDir, cache: Path, parts: dict[str, PatchDataset]) -> np.ndarray:
    """The staining group of every cached patch, computed once per cache and kept beside it
    under the cache's own content key."""
    path = cache / f"stain-groups-{cache_key(pd.read_csv(split.csv, dtype=str))}.npy"
    if not path.exists():
        np.save(path, stain_groups(parts["train"].pixels))
    return np.load(path)


def without_group(dataset: PatchDataset, groups: np.ndarray, group: int) -> PatchDataset:
    """``dataset`` less the patches of one staining group."""
    return PatchDataset(dataset.pixels, dataset.labels, dataset.indices[groups[dataset.indices] != group],
                        dataset.transform)


TARGET_SENSITIVITY = 0.95
VALIDATION_KEYS = {"labels_val", "val_auc", "val_auc_tta"}  # kept since 1f6b9e1; older runs: --score-val


def operating_points(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Each scored part's sensitivity and specificity with TTA at the threshold that reaches
    ``TARGET_SENSITIVITY`` on the validation images (when their logits were kept), and the
    specificity at the part's own threshold for that sensitivity (the ROC curve's point)."""
    chosen = threshold_for_sensitivity(scores["labels_val"], scores["val_auc_tta"], TARGET_SENSITIVITY) \
        if "labels_val" in scores else None
    points = {}
    for part in (key.removeprefix("labels_") for key in scores if key.startswith("labels_") and key != "labels_val"):
        labels, logits = scores[f"labels_{part}"], scores[f"{part}_auc_tta"]
        own = binary_metrics(labels, logits, threshold_for_sensitivity(labels, logits, TARGET_SENSITIVITY))
        points[part] = {"specificity_at_own_threshold": round(own["specificity"], 4)}
        if chosen is not None:
            at = binary_metrics(labels, logits, chosen)
            points[part].update(sensitivity=round(at["sensitivity"], 4), specificity=round(at["specificity"], 4))
    return points


def describe_points(points: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{part}: " + (f"sensitivity {p['sensitivity']}, specificity {p['specificity']} at the "
                                    "validation threshold, " if "sensitivity" in p else "")
                     + f"specificity {p['specificity_at_own_threshold']} at its own" for part, p in points.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", help="variant name: its model folder and result file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: all cores")
    parser.add_argument("--hold-out-stain", choices=GROUPS, help="train without this staining group, then score it")
    parser.add_argument("--prepare", action="store_true", help="only validate, split, decode and group the data")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, help="a split folder made earlier from --data: skips validation "
                                                   "(for a machine without Great Expectations)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/augmentation"))
    parser.add_argument("--ensemble", nargs="+", metavar="NAME", help="score these trained variants (in --out) "
                                                                       "as one model: the mean of their logits")
    parser.add_argument("--score-val", nargs="+", metavar="NAME", help="score the validation images with these "
                        "trained variants (in --out; with the --hold-out-stain they were trained with) and add the "
                        "logits to their NAME-logits.npz: variants trained before those were kept")
    parser.add_argument("--adapt", nargs="+", metavar="NAME", help="score these trained variants (in --out; with "
                        "the --hold-out-stain they were trained with) with BatchNorm statistics adapted to the "
                        "held-out group")
    parser.add_argument("--smoke", action="store_true", help="seconds: 240 generated patches, 1 epoch, a narrow network")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            args.data = write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=240, seed=6))
            args.out, args.epochs, args.name = Path(tmp) / "out", 1, args.name or "smoke"
            args.overrides = [f"width={SMOKE_WIDTH}", *args.overrides]
            run(args)
            ensemble(args.out, [args.name, args.name])  # the path only: one model twice is that model
            args.adapt = [args.name]
            adaptation(args, minimum=1)  # the test partition stands in for a held-out group
        return
    if args.ensemble:
        ensemble(args.out, args.ensemble)
        return
    if args.score_val:
        score_val(args)
        return
    if args.adapt:
        adaptation(args)
        return
    if not (args.prepare or args.name):
        parser.error("--name is required unless --prepare")
    run(args)


def prepared(args: argparse.Namespace, cfg: TrainConfig) -> tuple[SplitDir, dict[str, PatchDataset], np.ndarray]:
    """The split of ``--data`` (validated, split and decoded once per ``--out``), its
    partitions and every patch's staining group."""
    split = SplitDir(args.split) if args.split else steps.split(
        steps.validate(str(args.data), DatasetDir(args.out / "data"), ValidationConfig(), args.out / "manifests"),
        SplitConfig())
    cache = args.out / "cache"
    parts = steps.load_partitions(split, cache, training_augmentation(cfg))
    return split, parts, groups_of(split, cache, parts)


def run(args: argparse.Namespace) -> None:
    cfg = TrainConfig.model_validate({**TrainConfig().model_dump(), "epochs": args.epochs,
                                      "num_threads": args.threads, **parse_overrides(args.overrides)})
    split, parts, groups = prepared(args, cfg)
    if args.prepare:
        print(f"prepared {split.root}: {describe(parts['train'].pixels, groups)}")
        return
    print(f"{args.name}: {cfg.model_dump()}", flush=True)
    held_out = GROUPS.index(args.hold_out_stain) if args.hold_out_stain else None
    if held_out is not None:
        parts = {name: without_group(part, groups, held_out) for name, part in parts.items()}
    started = time.perf_counter()
    best = fit(parts["train"], parts["val"], cfg, args.out / args.name,
               lambda r: print(f"{args.name} {format_epoch(r, cfg.epochs)}", flush=True)).best_checkpoint
    result = {"name": args.name, "config": cfg.model_dump(), "hold_out_stain": args.hold_out_stain,
              "train_min": (time.perf_counter() - started) / 60}

    test = unaugmented(parts["test"])
    scored = {"test": test, "restained": restained(test)}
    if held_out is not None:
        scored["held_out_stain"] = PatchDataset(test.pixels, test.labels, np.flatnonzero(groups == held_out))
    scored["val"] = unaugmented(parts["val"])  # chooses the operating point
    scores = score_parts(best, scored)
    for name in scored:
        for key in (f"{name}_auc", f"{name}_auc_tta"):
            result[key] = round(float(roc_auc_score(scores[f"labels_{name}"], scores[key])), 4)
    result["operating_points"] = operating_points(scores)
    np.savez(args.out / f"{args.name}-logits.npz", **scores)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"{args.name}: {summary(result, list(scored))}; {result['train_min']:.1f} min training", flush=True)
    print(f"{args.name} operating points with TTA: {describe_points(result['operating_points'])}", flush=True)


def unaugmented(part: PatchDataset) -> PatchDataset:
    """``part`` as it is scored: without the training augmentation."""
    return PatchDataset(part.pixels, part.labels, part.indices)


def score_parts(checkpoint: Path, scored: dict[str, PatchDataset]) -> dict[str, np.ndarray]:
    """Each part's logits without and with TTA (``PART_auc``, ``PART_auc_tta``) and labels."""
    device = pick_device()
    net = load_model(checkpoint, device)
    scores = {}
    for tta in (False, True):
        for name, dataset in scored.items():
            key = f"{name}_auc{'_tta' if tta else ''}"
            scores[key], scores[f"labels_{name}"] = score_dataset(net, dataset, device, tta)
    return scores


def trained_variant(args: argparse.Namespace, name: str, need_val: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The result and kept logits of variant ``name`` in ``--out``; exits with the reason
    when it was not trained there, was trained with another ``--hold-out-stain`` (its
    held-out group would be a different set of images), or (``need_val``) has no
    validation logits to take the recorded threshold from."""
    for kept in (f"{name}-logits.npz", f"{name}.json"):
        if not (args.out / kept).is_file():
            raise SystemExit(f"no {kept} in {args.out}: train {name} there with augmentation.py first "
                             "(a run stopped before it finished scoring keeps only part of its results)")
    result = json.loads((args.out / f"{name}.json").read_text())
    if result.get("hold_out_stain") != args.hold_out_stain:
        raise SystemExit(f"{name} was trained with --hold-out-stain {result.get('hold_out_stain')}, "
                         f"not {args.hold_out_stain}")
    logits = dict(np.load(args.out / f"{name}-logits.npz"))
    if need_val and "val_auc" not in logits:
        raise SystemExit(f"no validation logits of {name}: add them with augmentation.py --score-val {name} first")
    return result, logits


def score_val(args: argparse.Namespace) -> None:
    """Add the validation logits to variants trained before they were kept, from each
    one's best checkpoint, on the validation images it was trained beside."""
    kept = {name: trained_variant(args, name, need_val=False)[1] for name in args.score_val}  # before the data
    _, parts, groups = prepared(args, TrainConfig())
    for name, scores in kept.items():
        val = parts["val"]
        if args.hold_out_stain:
            val = without_group(val, groups, GROUPS.index(args.hold_out_stain))
        scores.update(score_parts(args.out / name / "best.pt", {"val": unaugmented(val)}))
        np.savez(args.out / f"{name}-logits.npz", **scores)
        print(f"{name}: val AUC {roc_auc_score(scores['labels_val'], scores['val_auc']):.4f} "
              f"({roc_auc_score(scores['labels_val'], scores['val_auc_tta']):.4f} with TTA) on {len(val)} images; "
              f"operating points with TTA: {describe_points(operating_points(scores))}", flush=True)


def tumour_mixes(held: PatchDataset) -> dict[str, np.ndarray]:
    """Up to 2,000 of ``held``'s patches at 10% and at 90% tumour (seeded): the images a
    site might adapt to, to show how the adaptation moves with their tumour fraction."""
    labels = held.labels[held.indices]
    rng = np.random.default_rng(0)
    tumour, benign = held.indices[labels == 1], held.indices[labels == 0]
    size = min(2000, len(tumour) * 10 // 9, len(benign) * 10 // 9)
    return {f"{share}% tumour": np.concatenate([rng.choice(tumour, size * share // 100, replace=False),
                                                rng.choice(benign, size - size * share // 100, replace=False)])
            for share in (10, 90)}


def held_out_parts(args: argparse.Namespace) -> dict[str, PatchDataset]:
    """The unaugmented train and validation images a variant was trained on (without the
    held-out group) and the images it is scored on: the whole held-out group, or the test
    partition without a hold-out."""
    _, parts, groups = prepared(args, TrainConfig())
    train, val, held = (unaugmented(parts[name]) for name in ("train", "val", "test"))
    if args.hold_out_stain:
        group = GROUPS.index(args.hold_out_stain)
        train, val = without_group(train, groups, group), without_group(val, groups, group)
        held = PatchDataset(held.pixels, held.labels, np.flatnonzero(groups == group))
    return {"train": train, "val": val, "held_out": held}


def adaptation(args: argparse.Namespace, minimum: int = MIN_ADAPT_IMAGES) -> None:
    """``--adapt``: each variant's held-out group (the test partition without a hold-out)
    and validation images scored with BatchNorm statistics re-estimated on each, beside
    its scores with the training statistics (the adapted logits are kept in
    ``NAME-adapted-logits.npz``); then adapted to 2,000 held-out images of 10% and of 90%
    tumour. ``minimum``: the fewest images to adapt to (the smoke's are few)."""
    variants = {name: trained_variant(args, name) for name in args.adapt}  # checked before the data is read
    parts = held_out_parts(args)
    val, held = parts["val"], parts["held_out"]
    device = pick_device()
    labels = held.labels[held.indices]
    mixes = tumour_mixes(held)

    def adapted(name: str, adapt_on: PatchDataset) -> torch.nn.Module:
        net = load_model(args.out / name / "best.pt", device)
        adapt_batchnorm(net, DataLoader(adapt_on, 256), device, minimum)
        return net

    for name, (result, trained) in variants.items():
        scores = {"labels_val": val.labels[val.indices], "labels_held_out": labels}
        for part_name, images in (("val", val), ("held_out", held)):
            net = adapted(name, images)  # once per part: the statistics do not depend on TTA
            for suffix, tta in (("", False), ("_tta", True)):
                scores[f"{part_name}_auc{suffix}"] = score_dataset(net, images, device, tta)[0]
        part = "held_out_stain" if args.hold_out_stain else "test"
        np.savez(args.out / f"{name}-adapted-logits.npz", **scores)
        kept = threshold_for_sensitivity(trained["labels_val"], trained["val_auc_tta"], TARGET_SENSITIVITY)
        at_kept = binary_metrics(labels, scores["held_out_auc_tta"], kept)
        print(f"{name} adapted: held-out AUC {roc_auc_score(labels, scores['held_out_auc']):.4f} / "
              f"{roc_auc_score(labels, scores['held_out_auc_tta']):.4f} with TTA (training statistics: "
              f"{result[f'{part}_auc']} / {result[f'{part}_auc_tta']}); operating points with "
              f"TTA: {describe_points(operating_points(scores))}; at the training statistics' validation threshold "
              f"sensitivity {at_kept['sensitivity']:.4f}, specificity {at_kept['specificity']:.4f}", flush=True)
        # The threshold a retrain records (validation scored with the training statistics) and
        # the one validation gives with its own; without TTA, as the mixes are scored.
        thresholds = {kind: threshold_for_sensitivity(scores["labels_val"], logits, TARGET_SENSITIVITY)
                      for kind, logits in (("adapted", scores["val_auc"]), ("training", trained["val_auc"]))}
        recorded = {kind: binary_metrics(labels, logits, thresholds["training"]) for kind, logits in
                    (("adapted", scores["held_out_auc"]), ("training", trained[f"{part}_auc"]))}
        print(f"{name} held-out sensitivity / specificity at the recorded validation threshold (no TTA): " + ", ".join(
            f"{at['sensitivity']:.4f} / {at['specificity']:.4f} with the {kind} statistics"
            for kind, at in recorded.items()), flush=True)
        for mix, indices in mixes.items():
            logits = score_dataset(adapted(name, PatchDataset(held.pixels, held.labels, indices)), held, device)[0]
            points = {kind: binary_metrics(labels, logits, threshold) for kind, threshold in thresholds.items()}
            print(f"{name} adapted to {len(indices)} held-out images of {mix}: AUC {roc_auc_score(labels, logits):.4f}; "
                  "sensitivity / specificity (no TTA) " + ", ".join(
                      f"{points[kind]['sensitivity']:.4f} / {points[kind]['specificity']:.4f} {where}"
                      for kind, where in (("training", "at the recorded threshold"),
                                          ("adapted", "at validation's own adapted threshold"))), flush=True)


def summary(result: dict[str, float], parts: list[str]) -> str:
    return ", ".join(f"{name} AUC {result[name + '_auc']} ({result[name + '_auc_tta']} with TTA)" for name in parts)


def ensemble(out: Path, names: list[str]) -> None:
    """Score trained variants as one model: the mean of their logits on each partition
    (TTA's logits with TTA's), from the logits each run kept."""
    missing = [name for name in names if not (out / f"{name}-logits.npz").is_file()]
    if missing:
        raise SystemExit(f"no logits of {', '.join(missing)} in {out}: train each there first (runs from before "
                         "the logits were kept have only their .json)")
    runs = [dict(np.load(out / f"{name}-logits.npz")) for name in names]
    # Validation logits only where every member has them (older runs need --score-val).
    keys = [key for key in runs[0] if all(key in run for run in runs)]
    parts = [key.removeprefix("labels_") for key in keys if key.startswith("labels_")]
    if any(set(run) - VALIDATION_KEYS != set(runs[0]) - VALIDATION_KEYS
           or any(not np.array_equal(run[f"labels_{part}"], runs[0][f"labels_{part}"]) for part in parts)
           for run in runs):
        raise SystemExit(f"{', '.join(names)}: not scored on the same patches; train them on one --out")
    result, agreement = {}, []
    for part in parts:
        labels = runs[0][f"labels_{part}"]
        for key in (f"{part}_auc", f"{part}_auc_tta"):
            result[key] = round(float(roc_auc_score(labels, np.mean([run[key] for run in runs], axis=0))), 4)
        # Do the members err on the same patches? (averaging only helps where they do not)
        tta = np.stack([run[f"{part}_auc_tta"] for run in runs])
        wrong = (tta > 0) != (labels > 0.5)
        agreement.append(f"{part} logit correlation {np.corrcoef(tta).min():.3f}, wrong at p = 0.5: "
                         f"{'/'.join(str(int(w.sum())) for w in wrong)}, {int(wrong.all(0).sum())} by all")
    print(f"ensemble of {' + '.join(names)}: {summary(result, parts)}", flush=True)
    print("members with TTA: " + "; ".join(agreement), flush=True)
    mean = {key: np.mean([run[key] for run in runs], axis=0) if "_auc" in key else runs[0][key] for key in keys}
    print(f"operating points with TTA: {describe_points(operating_points(mean))}", flush=True)


if __name__ == "__main__":
    main()
