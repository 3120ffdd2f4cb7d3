"""Quality on real data: the default model, default settings, the shared PCam patches.

Trains through the library exactly as a retrain run would (validate -> split -> train
with ``TrainConfig()``), then scores the best checkpoint on the data set's own test
partition with and without 8-way TTA, and prints the AUCs, the wall time and where the
model was written. The test partition here shares slides with the training images (no
slide ids are available), so it is optimistic. As a stand-in for unseen slides it also
scores the same test patches re-stained as eight "virtual labs" (``stain_shift.py``).

    .venv/bin/python bench/quality.py [--data DIR] [--out DIR] [--epochs N]
    .venv/bin/python bench/quality.py --smoke     # seconds: 240 generated patches, 1 epoch

Its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from stain_shift import restained

from histo_core import steps
from histo_core.config import SMOKE_WIDTH, EvalConfig, SplitConfig, TrainConfig, ValidationConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.evaluate import binary_metrics, bootstrap_auc_ci, full_report, sigmoid
from histo_core.inference import load_model, pick_device, score_dataset
from histo_core.layout import DatasetDir, ModelDir
from histo_core.train import format_epoch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="default: the default config's")
    parser.add_argument("--smoke", action="store_true", help="seconds: 240 generated patches, 1 epoch, a narrow network")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=240, seed=5))
            run(data, Path(tmp) / "out", TrainConfig(epochs=1, width=SMOKE_WIDTH), bootstrap=50)
    else:
        run(args.data, args.out, TrainConfig(epochs=args.epochs))


def run(data: Path, out: Path, cfg: TrainConfig, bootstrap: int = 1000) -> None:
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config: {cfg.model_dump()}", flush=True)

    dataset = steps.validate(str(data), DatasetDir(out / "data"), ValidationConfig(), out / "manifests")
    split = steps.split(dataset, SplitConfig())

    def report(r: dict) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {format_epoch(r, cfg.epochs)}", flush=True)

    model = steps.train(split, ModelDir(out / "model"), out / "cache", cfg, report)
    train_s = time.perf_counter() - started

    parts = steps.load_partitions(split, out / "cache")
    device = pick_device()
    net = load_model(model.best, device)
    results = {}
    for tta in (False, True):
        val_logits, val_labels = score_dataset(net, parts["val"], device, tta)
        test_logits, test_labels = score_dataset(net, parts["test"], device, tta)
        metrics = full_report(val_labels, val_logits, test_labels, test_logits, EvalConfig().target_sensitivity,
                              bootstrap)
        metrics["auc_bootstrap_ci"] = bootstrap_auc_ci(test_labels, sigmoid(test_logits), bootstrap)
        results["tta" if tta else "plain"] = metrics
    test = parts["test"]
    restained_test = restained(test)
    for tta in (False, True):
        logits, labels = score_dataset(net, restained_test, device, tta)
        results["stain_shift_tta" if tta else "stain_shift"] = binary_metrics(labels, sigmoid(logits))
    total_s = time.perf_counter() - started
    (out / "quality.json").write_text(json.dumps({"train_s": train_s, "total_s": total_s, **results}, indent=2))

    print(f"\ndata: {data} -> {len(parts['train'])} train / {len(parts['val'])} val / "
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
    print(f"model: {model.best.resolve()}")


if __name__ == "__main__":
    main()
