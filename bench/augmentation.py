"""Compare training settings on in-distribution vs re-stained test AUC (short runs).

The shared test partition shares slides with the training images, so a setting that
only memorises those slides' stain looks best there. This trains one variant of
``TrainConfig`` (``--set key=value`` overrides, e.g. ``--set hed_jitter=0.1``) for a
short schedule on the shared real patches and prints its AUC on the test partition and
on the same partition re-stained as eight "virtual labs" (``stain_shift.py``), the
stand-in for unseen slides. Run variants side by side with ``--threads 1`` each.

    .venv/bin/python bench/augmentation.py --name hed10 --set hed_jitter=0.1 [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stain_shift import restained

from histo_core import steps
from histo_core.config import SplitConfig, TrainConfig, ValidationConfig
from histo_core.evaluate import predict_checkpoint_logits
from quality import DEFAULT_DATA
from sklearn.metrics import roc_auc_score


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["hed_jitter=0.1"]`` -> ``{"hed_jitter": "0.1"}``; pydantic converts the values."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in TrainConfig.model_fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(TrainConfig.model_fields)}")
        overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="variant name: its model folder and result file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: all cores")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/augmentation"))
    args = parser.parse_args()
    cfg = TrainConfig.model_validate({**TrainConfig().model_dump(), "epochs": args.epochs,
                                      "num_threads": args.threads, **parse_overrides(args.overrides)})
    print(f"{args.name}: {cfg.model_dump()}", flush=True)

    manifest = steps.validate(str(args.data), args.out / "data", ValidationConfig(), args.out / "manifests")
    split = steps.split(manifest, SplitConfig())
    started = time.perf_counter()
    best = steps.train(split, args.out / args.name, args.out / "cache", cfg,
                       lambda r: print(f"{args.name} epoch {r['epoch']}: val loss {r['val_loss']:.4f}, "
                                       f"val AUC {r['val_auc']:.4f}, {r['images_per_s']:.0f} img/s", flush=True))
    result = {"name": args.name, "config": cfg.model_dump(), "train_min": (time.perf_counter() - started) / 60}

    test = steps.load_partitions(split, args.out / "cache")["test"]
    restained_test = restained(test)
    for tta in (False, True):
        for name, dataset in (("test", test), ("restained", restained_test)):
            logits, labels = predict_checkpoint_logits(best, dataset, tta=tta)
            result[f"{name}_auc{'_tta' if tta else ''}"] = round(float(roc_auc_score(labels, logits)), 4)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"{args.name}: test AUC {result['test_auc']} ({result['test_auc_tta']} with TTA), re-stained "
          f"{result['restained_auc']} ({result['restained_auc_tta']} with TTA); "
          f"{result['train_min']:.1f} min training")


if __name__ == "__main__":
    main()
