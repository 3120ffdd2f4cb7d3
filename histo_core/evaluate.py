"""Score models on the hold-out: challenger and champion on the very same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from histo_core.data.dataset import PatchDataset
from histo_core.train import load_model, pick_device, predict_logits


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, and accuracy / sensitivity / specificity at ``threshold`` on probabilities."""
    labels = np.asarray(labels).astype(int)
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "accuracy": float((predicted == positives).mean()),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
        "n": int(len(labels)),
        "n_positive": int(positives.sum()),
    }


def evaluate_checkpoint(checkpoint: Path | str, dataset: PatchDataset, device: str = "auto",
                        batch_size: int = 256) -> dict[str, float]:
    """Metrics of the model in ``checkpoint`` on every item of ``dataset``."""
    torch_device = pick_device(device)
    model = load_model(checkpoint, torch_device)
    logits, labels = predict_logits(model, DataLoader(dataset, batch_size), torch_device)
    return binary_metrics(labels, 1 / (1 + np.exp(-logits)))
