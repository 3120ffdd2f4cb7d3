"""Score models on the hold-out: challenger and champion on the very same images.

AUC confidence intervals and the paired comparison use DeLong's method (fast form of
Sun & Xu, 2014): exact for the AUC's U-statistic, deterministic (no resampling seed),
and it accounts for the correlation between two models scored on the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


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


BOOTSTRAP_BLOCK_CELLS = 2_000_000  # draw counts held at once (16 MB): resamples per block = this / images


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of the AUC over ``n`` resamples of the images (seeded: repeatable).

    Each resample's AUC is the Mann-Whitney U of its draw counts over the scores sorted
    once (ties count one half, as ``roc_auc_score``), computed for a block of resamples at
    a time: a thousand ``roc_auc_score`` calls cost seconds of validation overhead on a
    hold-out of a few hundred images, and this costs milliseconds, with the same draws.
    """
    rng = np.random.default_rng(seed)
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores)
    size = len(labels)
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    ties = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # where each run of equal scores starts
    positive = labels[order] == 1
    position = np.empty(size, dtype=np.int64)
    position[order] = np.arange(size)
    aucs = []
    block = max(1, BOOTSTRAP_BLOCK_CELLS // max(size, 1))
    for first in range(0, n, block):
        rows = min(block, n - first)
        draws = np.stack([rng.integers(0, size, size) for _ in range(rows)])
        flat = (position[draws] + size * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * size).reshape(rows, size)
        pos = np.add.reduceat(counts * positive, ties, axis=1)
        neg = np.add.reduceat(counts * ~positive, ties, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        u = (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(axis=1)  # negatives below + half the tied
        both = (n_pos > 0) & (n_neg > 0)  # a one-class resample has no AUC
        aucs.append(u[both] / (n_pos[both] * n_neg[both]))
    aucs = np.concatenate(aucs)
    if not len(aucs):
        raise ValueError(f"no resample of the {size} images has both classes: the AUC has no CI")
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (chosen on validation data)."""
    positives = np.sort(scores[np.asarray(labels).astype(int) == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no positive images to choose an operating point on")
    return float(positives[min(len(positives) - 1, int(np.ceil(target * len(positives))) - 1)])


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size."""
    labels = np.asarray(labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(labels[members].mean() - probabilities[members].mean())
    return float(error)


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """Temperature T minimising the log-loss of sigmoid(logits / T) (fitted on validation)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels).astype(float)

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - labels * z))

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function without overflow for extreme logits (scipy's ``expit``)."""
    from scipy.special import expit

    return expit(logits)


def full_report(val_labels: np.ndarray, val_logits: np.ndarray, test_labels: np.ndarray, test_logits: np.ndarray,
                target_sensitivity: float = 0.95, bootstrap: int = 1000) -> dict[str, float]:
    """Test metrics of one model, with its calibration and operating point fitted on validation.

    Temperature scaling does not change the ranking (AUC), only what the probabilities
    mean; the operating point is the threshold reaching ``target_sensitivity`` on the
    validation images, then applied unchanged to the test images.
    """
    temperature = fit_temperature(val_labels, val_logits)
    test_probs = sigmoid(test_logits / temperature)
    threshold = threshold_for_sensitivity(val_labels, sigmoid(val_logits / temperature), target_sensitivity)
    report = binary_metrics(test_labels, test_probs)
    at_op = binary_metrics(test_labels, test_probs, threshold)
    low, high = bootstrap_auc_ci(test_labels, test_probs, bootstrap)
    report.update({
        "auc_bootstrap_ci_low": low, "auc_bootstrap_ci_high": high,
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(test_labels, sigmoid(test_logits)),
        "ece": expected_calibration_error(test_labels, test_probs),
        "operating_point": {"target_sensitivity": target_sensitivity, "threshold": threshold,
                            **{k: at_op[k] for k in ("accuracy", "sensitivity", "specificity")},
                            **rate_intervals(test_labels, test_probs >= threshold),
                            "fitted_on": "validation", "fitted_on_images": int(len(val_labels)),
                            "fitted_on_positives": int(np.sum(val_labels == 1))},
    })
    return report


def rate_intervals(labels: np.ndarray, called: np.ndarray) -> dict[str, float | int]:
    """Wilson 95% intervals of the sensitivity and specificity of ``called`` (what a
    pathologist reads next to the point estimate: on 60 tumour patches, 0.95 means
    0.86-0.98), with the counts they come from."""
    from scipy.stats import binomtest

    labels = np.asarray(labels).astype(int)
    out: dict[str, float | int] = {}
    for name, truth, hit in (("sensitivity", labels == 1, called), ("specificity", labels == 0, ~called)):
        n, k = int(truth.sum()), int((hit & truth).sum())
        low, high = binomtest(k, n).proportion_ci(0.95, method="wilson") if n else (float("nan"), float("nan"))
        out.update({f"{name}_ci_low": float(low), f"{name}_ci_high": float(high), f"{name}_n": n})
    return out


def cross_fitted_report(labels: np.ndarray, logits: np.ndarray, target_sensitivity: float = 0.95,
                        bootstrap: int = 1000, folds: int = 5, seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """``full_report`` for images with no validation set of their own (``histo evaluate``
    on any labelled folder): each fold's temperature and operating point are fitted on the
    other folds, so the calibration and the sensitivity/specificity at the operating point
    are never measured on the images that chose them. The AUC needs no fitting and uses
    every image. The temperature and threshold reported are those fitted on all images:
    the values to deploy. Also returns each image's cross-fitted calibrated probability."""
    from sklearn.model_selection import StratifiedKFold

    labels, logits = np.asarray(labels).astype(int), np.asarray(logits, dtype=float)
    folds = min(folds, int(np.bincount(labels, minlength=2).min()))
    if folds < 2:
        raise ValueError("an operating point needs at least 2 images of each class")
    probability, chosen = np.empty(len(labels)), np.empty(len(labels), dtype=bool)
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(logits, labels):
        temperature = fit_temperature(labels[fit], logits[fit])
        threshold = threshold_for_sensitivity(labels[fit], sigmoid(logits[fit] / temperature), target_sensitivity)
        probability[held] = sigmoid(logits[held] / temperature)
        chosen[held] = probability[held] >= threshold
    temperature, as_scored = fit_temperature(labels, logits), sigmoid(logits)
    positives, negatives = labels == 1, labels == 0
    report: dict[str, Any] = binary_metrics(labels, as_scored)
    at_half = binary_metrics(labels, probability)
    low, high = bootstrap_auc_ci(labels, as_scored, bootstrap)
    report.update({k: at_half[k] for k in ("accuracy", "sensitivity", "specificity")})
    report.update({
        "auc_bootstrap_ci_low": low, "auc_bootstrap_ci_high": high,
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(labels, as_scored),
        "ece": expected_calibration_error(labels, probability),
        "operating_point": {
            "target_sensitivity": target_sensitivity,
            "threshold": threshold_for_sensitivity(labels, sigmoid(logits / temperature), target_sensitivity),
            "accuracy": float((chosen == positives).mean()), "sensitivity": float(chosen[positives].mean()),
            "specificity": float((~chosen[negatives]).mean()), "fitted_on": f"{folds}-fold cross-fitting"},
    })
    return report, probability


def plot_curves(labels: np.ndarray, curves: dict[str, np.ndarray], paths: dict[str, Path],
                thresholds: dict[str, float] | None = None) -> dict[str, Path]:
    """ROC, precision-recall and reliability plots of models on the same images, as PNG
    files at ``paths["roc"]``, ``paths["pr"]`` and ``paths["reliability"]``.

    ``thresholds``: each model's operating point, marked on its ROC curve. The PR plot
    shows the no-skill line (the prevalence); the reliability plot uses 10 equal-width
    bins, labels each point with its image count, and gives each model's ECE."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(int)
    figures = {name: plt.subplots(figsize=(4.5, 4.5), dpi=120) for name in paths}
    for name, probs in curves.items():
        fpr, tpr, _ = roc_curve(labels, probs)
        line, = figures["roc"][1].plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, probs):.3f})")
        if thresholds and name in thresholds:
            at = binary_metrics(labels, probs, thresholds[name])
            figures["roc"][1].plot(1 - at["specificity"], at["sensitivity"], "o", color=line.get_color(),
                                   label=f"{name} operating point (p >= {thresholds[name]:.3f})")
        precision, recall, _ = precision_recall_curve(labels, probs)
        figures["pr"][1].plot(recall, precision, label=f"{name} (AP {average_precision_score(labels, probs):.3f})")
        _reliability(figures["reliability"][1], labels, probs, name)
    figures["roc"][1].plot([0, 1], [0, 1], ":", color="grey")
    figures["pr"][1].axhline(labels.mean(), linestyle=":", color="grey", label=f"no skill ({labels.mean():.2f})")
    figures["reliability"][1].plot([0, 1], [0, 1], ":", color="grey")
    axes_labels = {"roc": ("false positive rate", "true positive rate", "ROC"),
                   "pr": ("recall (sensitivity)", "precision", "Precision-recall"),
                   "reliability": ("predicted probability", "observed tumour fraction", "Reliability")}
    for name, (fig, ax) in figures.items():
        xlabel, ylabel, title = axes_labels[name]
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title} on {len(labels)} images")
        ax.legend(loc="lower right" if name != "pr" else "lower left", fontsize="small")
        fig.tight_layout()
        fig.savefig(paths[name])
        plt.close(fig)
    return paths


def _reliability(ax: Any, labels: np.ndarray, probs: np.ndarray, name: str, bins: int = 10) -> None:
    """Observed tumour fraction against mean predicted probability per equal-width bin."""
    which = np.clip(np.digitize(probs, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    mean_pred = [probs[which == b].mean() for b in used]
    observed = [labels[which == b].mean() for b in used]
    line, = ax.plot(mean_pred, observed, "o-",
                    label=f"{name} (ECE {expected_calibration_error(labels, probs):.3f})")
    for x, y, b in zip(mean_pred, observed, used):
        ax.annotate(str(int((which == b).sum())), (x, y), textcoords="offset points", xytext=(4, -10),
                    fontsize=6, color=line.get_color())
