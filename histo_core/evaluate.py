"""Score models on the hold-out: challenger and champion on the very same images.

AUC confidence intervals and the paired comparison use DeLong's method (fast form of
Sun & Xu, 2014): exact for the AUC's U-statistic, deterministic (no resampling seed),
and it accounts for the correlation between two models scored on the same images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import DataLoader

from histo_core.data.dataset import PatchDataset
from histo_core.train import load_model, pick_device, predict_logits


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC with its 95% CI, and accuracy / sensitivity / specificity at ``threshold``."""
    labels = np.asarray(labels).astype(int)
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    (auc,), cov = delong(labels, scores[None, :])
    half = 1.959964 * float(np.sqrt(max(cov[0, 0], 0.0)))
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "auc_ci_low": float(max(0.0, auc - half)),
        "auc_ci_high": float(min(1.0, auc + half)),
        "threshold": threshold,
        "accuracy": float((predicted == positives).mean()),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
        "n": int(len(labels)),
        "n_positive": int(positives.sum()),
    }


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of each row of ``scores`` (k, n) and their (k, k) DeLong covariance."""
    labels = np.asarray(labels).astype(bool)
    x, y = scores[:, labels], scores[:, ~labels]  # (k, m) positives, (k, n) negatives
    m, n = x.shape[1], y.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 images of each class; got {m} positive, {n} negative")
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # ... and of the negatives
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


def compare_paired(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> dict[str, float]:
    """DeLong test that the challenger's AUC exceeds the champion's on the same images.

    Returns the AUC difference, its 95% CI and the one-sided p-value.
    """
    aucs, cov = delong(labels, np.stack([challenger, champion]))
    diff = float(aucs[0] - aucs[1])
    sd = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 1e-12)))
    return {"method": "delong", "auc_difference": diff, "difference_ci_low": diff - 1.959964 * sd,
            "difference_ci_high": diff + 1.959964 * sd, "p_value": float(norm.sf(diff / sd))}


def predict_probabilities(checkpoint: Path | str, dataset: PatchDataset, device: str = "auto",
                          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Tumour probabilities of the model in ``checkpoint`` for every item, and the labels."""
    torch_device = pick_device(device)
    model = load_model(checkpoint, torch_device)
    logits, labels = predict_logits(model, DataLoader(dataset, batch_size), torch_device)
    return 1 / (1 + np.exp(-logits)), labels


def evaluate_checkpoint(checkpoint: Path | str, dataset: PatchDataset, device: str = "auto") -> dict[str, float]:
    """Metrics of the model in ``checkpoint`` on every item of ``dataset``."""
    probabilities, labels = predict_probabilities(checkpoint, dataset, device)
    return binary_metrics(labels, probabilities)


def plot_roc(labels: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> Path:
    """ROC curves of one or more models on the same images, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC on {len(labels)} hold-out images")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
