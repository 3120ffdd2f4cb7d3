"""Is the generated sample data learnable, and not by colour alone?

Generates the demo's first batch (2,000 patches), trains the default CNN for the demo's
3 epochs (otherwise default settings) through the library on 2 CPU threads, and prints the test-partition
AUC with the wall time, beside the AUC of one-feature logistic regressions on mean
colour. Goals (issue 2): CNN AUC >= 0.9 within about two CPU minutes; any mean-colour
feature AUC <= 0.75.

    .venv/bin/python bench/learnability.py
    .venv/bin/python bench/learnability.py --smoke    # seconds: 200 patches, 1 epoch
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from histo_core import steps
from histo_core.config import SMOKE_WIDTH, RetrainConfig, TrainConfig
from histo_core.data.cache import open_cache
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.evaluate import binary_metrics, sigmoid
from histo_core.inference import load_model, pick_device, score_dataset
from histo_core.layout import DatasetDir, ModelDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 200 patches, 1 epoch, a narrow network")
    args = parser.parse_args()
    count, epochs, width = (200, 1, SMOKE_WIDTH) if args.smoke else (2000, 3, TrainConfig().width)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_kaggle_layout(root / "data", SyntheticSpec(count=count, seed=1))
        cfg = RetrainConfig(data=str(root / "data"), train=TrainConfig(epochs=epochs, width=width))
        split = steps.split(steps.validate(cfg.data, DatasetDir(root / "dataset"), cfg.validation), cfg.split)
        start = time.perf_counter()
        model = steps.train(split, ModelDir(root / "model"), root / "cache", cfg.train)
        train_s = time.perf_counter() - start
        parts = steps.load_partitions(split, root / "cache")
        test = parts["test"]
        device = pick_device()
        logits, labels = score_dataset(load_model(model.best, device), test, device)
        auc = binary_metrics(labels, sigmoid(logits))["auc"]
        print(f"CNN ({cfg.train.model}, {cfg.train.epochs} epochs, {len(parts['train'])} train images): "
              f"test AUC {auc:.4f}, training wall time {train_s:.0f}s  [goal: >= 0.90 within ~120 s]")

        pixels = np.asarray(open_cache(next((root / "cache").glob("*.npy"))), dtype=np.float32)
        means = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
        labels = test.labels
        for name, feature in [("grey", means.mean(axis=1)), ("red", means[:, 0]),
                              ("green", means[:, 1]), ("blue", means[:, 2])]:
            x = feature[:, None]
            lr = LogisticRegression().fit(x, labels)
            print(f"mean {name:<5} logistic regression AUC {roc_auc_score(labels, lr.predict_proba(x)[:, 1]):.4f}"
                  "  [goal: <= 0.75]")


if __name__ == "__main__":
    main()
