"""Quality on real data: the default model, default settings, the shared PCam patches.

Trains through the library exactly as a retrain run would (validate -> split -> train
with ``TrainConfig()``), then scores the best checkpoint on the data set's own test
partition with and without 8-way TTA, and prints the AUCs, the wall time and where the
model was written. The test partition here shares slides with the training images (no
slide ids are available), so it is optimistic. As a stand-in for unseen slides it also
scores the same test patches re-stained as eight "virtual labs" (``stain_shift.py``).

    .venv/bin/python bench/quality.py [--data DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from stain_shift import restained

from histo_core import steps
from histo_core.config import EvalConfig, SplitConfig, TrainConfig, ValidationConfig
from histo_core.evaluate import binary_metrics, bootstrap_auc_ci, full_report, predict_checkpoint_logits, sigmoid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    args = parser.parse_args()
    cfg = TrainConfig()
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config: {cfg.model_dump()}", flush=True)

    manifest = steps.validate(str(args.data), args.out / "data", ValidationConfig(), args.out / "manifests")
    split = steps.split(manifest, SplitConfig())

    def report(r: dict) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] epoch {r['epoch']:2d}  train loss {r['train_loss']:.4f}  "
              f"val loss {r['val_loss']:.4f}  val AUC {r['val_auc']:.4f}  lr {r['lr']:.1e}  "
              f"{r['images_per_s']:.0f} img/s{'  *' if r['improved'] else ''}", flush=True)

    best = steps.train(split, args.out / "model", args.out / "cache", cfg, report)
    train_s = time.perf_counter() - started

    parts = steps.load_partitions(split, args.out / "cache")
    results = {}
    for tta in (False, True):
        val_logits, val_labels = predict_checkpoint_logits(best, parts["val"], tta=tta)
        test_logits, test_labels = predict_checkpoint_logits(best, parts["test"], tta=tta)
        metrics = full_report(val_labels, val_logits, test_labels, test_logits, EvalConfig().target_sensitivity)
        metrics["auc_bootstrap_ci"] = bootstrap_auc_ci(test_labels, sigmoid(test_logits))
        results["tta" if tta else "plain"] = metrics
    test = parts["test"]
    restained_test = restained(test)
    for tta in (False, True):
        logits, labels = predict_checkpoint_logits(best, restained_test, tta=tta)
        results["stain_shift_tta" if tta else "stain_shift"] = binary_metrics(labels, sigmoid(logits))
    total_s = time.perf_counter() - started
    (args.out / "quality.json").write_text(json.dumps({"train_s": train_s, "total_s": total_s, **results}, indent=2))

    print(f"\ndata: {args.data} -> {len(parts['train'])} train / {len(parts['val'])} val / "
          f"{len(parts['test'])} test images")
    for name in ("plain", "tta"):
        m = results[name]
        op = m["operating_point"]
        print(f"test AUC {'with TTA' if name == 'tta' else 'no TTA  '}: {m['auc']:.4f} "
              f"(95% CI {m['auc_ci_low']:.4f}-{m['auc_ci_high']:.4f}); at sensitivity target {op['target_sensitivity']}: "
              f"sens {op['sensitivity']:.3f}, spec {op['specificity']:.3f}; ECE {m['ece']:.4f}")
    for name in ("stain_shift", "stain_shift_tta"):
        m = results[name]
        print(f"re-stained test AUC {'with TTA' if name.endswith('tta') else 'no TTA  '}: {m['auc']:.4f} "
              f"(95% CI {m['auc_ci_low']:.4f}-{m['auc_ci_high']:.4f})")
    print(f"wall time: training {train_s / 60:.1f} min, total {total_s / 60:.1f} min")
    print(f"model: {best.resolve()}")


if __name__ == "__main__":
    main()
