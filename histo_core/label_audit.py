"""The label audit: a batch whose labels are quietly wrong is held, not trained on.

Row rules catch corrupt and wrong-size images; they cannot see a batch whose images are
fine and a fraction of whose labels are flipped (an annotator's mistake, a mixed-up
export). The champion can: on good batches it *ranks* tumour above normal with a steady
AUC, and a fraction ``f`` of flipped labels pulls a batch's AUC from ``A`` down to about
``A - f (2A - 1)`` (0.92 -> 0.75 at 20%). Each new batch that passed the row rules is
scored by the champion once, when it is first judged, and its AUC is compared with the
other usable batches' (recorded in their verdicts, plus the other new batches of this run).

Why a ranking and not how often the champion's 0.5 call disagrees with the labels (the
first version of this audit): a champion that is weak or badly calibrated, such as a
nightly one-epoch model that calls nearly every patch 0, disagrees with about the share
of positives in every batch, flipped or not, so the disagreement rate hid flipped labels
exactly when the champion was young. The AUC does not depend on the threshold or on
calibration, only on the order the champion puts the patches in.

The reference is a random-effects mean of the usable batches' AUCs (DerSimonian-Laird):
batches from different labs legitimately differ in how hard they are, and that spread
(``tau``) widens the band a new batch is judged against, on top of each AUC's own sampling
error (Hanley-McNeil). A batch whose AUC falls below the reference by more than
``label_audit_margin`` and by more than that band explains (one-sided z > 3) is **held**:
left out of training like a rejected batch, listed by ``histo data batches``, announced
(``histo.batch.held``), and taken back with ``histo data readmit`` after a look.

Not audited, accepted, with the reason in its verdict: no champion yet, no reference yet,
fewer usable rows than ``label_audit_min_rows``, labels of one class only (no ranking to
judge), or a champion that ranks the reference batches below ``MIN_REFERENCE_AUC`` (too
weak to tell flipped labels from its own mistakes).
bench/label_audit.py measures the fraction of flipped labels this catches on the shared
real patches, with a trained and with a one-epoch champion, how many clean batches it
holds, and what it does with a stain-shifted clean batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from histo_core.batch_verdicts import USABLE
from histo_core.config import ValidationConfig

log = logging.getLogger(__name__)

# image paths -> the champion's logits (NaN: not scored); None: no champion that can score
Scorer = Callable[[list[str]], "np.ndarray | None"]
Z_LIMIT = 3.0
MIN_REFERENCE_AUC = 0.6


def batch_auc(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The champion's AUC on one batch's labels, with its Hanley-McNeil variance and the
    0.5-threshold disagreement rate (kept for the operator: it is the number people know)."""
    scored = ~np.isnan(logits)
    scores, truth = logits[scored], labels[scored]
    positives, negatives = int(truth.sum()), int(len(truth) - truth.sum())
    disagree = int(((scores >= 0).astype(int) != truth).sum())
    record: dict[str, Any] = {"rows": int(scored.sum()), "positives": positives, "negatives": negatives,
                              "disagree": disagree, "rate": round(disagree / max(len(truth), 1), 4)}
    if positives and negatives:
        record["auc"] = round(float(roc_auc_score(truth, scores)), 4)
    return record


def auc_variance(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the sampling variance of an AUC from these class counts.
    Taken at the reference AUC (the hypothesis that the batch is like the others), never
    at the batch's own: a small batch ranked perfectly would otherwise claim no error."""
    auc = min(max(auc, 0.5), 0.999)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2))
    return max(var / (positives * negatives), 1e-8)


def random_effects(aucs: list[float], variances: list[float]) -> tuple[float, float, float]:
    """(mean, its variance, between-batch variance tau^2) by DerSimonian-Laird."""
    a, v = np.asarray(aucs), np.asarray(variances)
    w = 1 / v
    fixed = float((w * a).sum() / w.sum())
    q = float((w * (a - fixed) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (len(a) - 1)) / c) if c > 0 else 0.0
    w_star = 1 / (v + tau2)
    return float((w_star * a).sum() / w_star.sum()), float(1 / w_star.sum()), tau2


def audit_batches(verdicts: dict[str, dict[str, Any]], rows: pd.DataFrame, scorer: Scorer | None,
                  cfg: ValidationConfig) -> None:
    """Score each new accepted batch and hold those the champion ranks much worse than
    the usable batches; updates ``verdicts`` in place (``audit`` on every audited batch)."""
    new = [b for b, v in verdicts.items() if v.get("new") and v["verdict"] == "accepted"]
    if not new or cfg.label_audit_margin <= 0:
        return
    for batch in new:
        usable = rows[(rows["batch"] == batch) & rows["labelled"] & (rows["status"] != "quarantined")]
        if len(usable) < cfg.label_audit_min_rows:
            verdicts[batch]["audit"] = {"skipped": f"{len(usable)} usable rows, fewer than label_audit_min_rows "
                                                   f"({cfg.label_audit_min_rows})"}
            continue
        logits = scorer(usable["path"].tolist()) if scorer is not None else None
        if logits is None:
            verdicts[batch]["audit"] = {"skipped": "no champion that can serve, to audit the labels with"}
            continue
        verdicts[batch]["audit"] = batch_auc(logits, usable["label"].astype(int).to_numpy())
    for batch in new:
        _judge_against_reference(batch, verdicts, cfg)


def _judge_against_reference(batch: str, verdicts: dict[str, dict[str, Any]], cfg: ValidationConfig) -> None:
    audit = verdicts[batch]["audit"]
    if "skipped" in audit:
        return
    if "auc" not in audit:
        audit["skipped"] = "labels of one class only: no ranking to audit"
        return
    # A batch readmitted after being held keeps its disputed labels out of the reference;
    # verdicts from before the ranking audit (no "auc") are not comparable and sit out.
    reference = [v["audit"] for b, v in verdicts.items() if b != batch and v["verdict"] in USABLE
                 and "auc" in v.get("audit", {}) and (v.get("previous") or {}).get("verdict") != "held"]
    if not reference:
        audit["reference"] = None
        return
    pairs = np.array([a["positives"] * a["negatives"] for a in reference], dtype=float)
    common = float((pairs * [a["auc"] for a in reference]).sum() / pairs.sum())
    mean, mean_var, tau2 = random_effects([a["auc"] for a in reference],
                                          [auc_variance(common, a["positives"], a["negatives"]) for a in reference])
    drop = mean - audit["auc"]
    z = drop / math.sqrt(auc_variance(mean, audit["positives"], audit["negatives"]) + tau2 + mean_var)
    audit.update(reference={"batches": len(reference), "rows": sum(a["rows"] for a in reference),
                            "auc": round(mean, 4), "spread": round(math.sqrt(tau2), 4)},
                 drop=round(drop, 4), z=round(z, 2))
    if mean < MIN_REFERENCE_AUC:
        audit["skipped"] = (f"the champion ranks the usable batches at AUC {mean:.2f}, below {MIN_REFERENCE_AUC}: "
                            "too weak to tell flipped labels from its own mistakes")
        return
    if drop > cfg.label_audit_margin and z > Z_LIMIT:
        verdicts[batch].update(verdict="held", reasons=[
            f"label audit: the champion ranks this batch's {audit['rows']} labels at AUC {audit['auc']:.2f}, "
            f"against {mean:.2f} on {len(reference)} usable batch{'es' if len(reference) > 1 else ''} (-{drop:.2f}, z {z:.1f}; margin "
            f"{cfg.label_audit_margin:.2f}): flipped or mixed-up labels? Held for review "
            "(histo data readmit takes it back)"])
        log.warning("batch %s held: %s", batch, verdicts[batch]["reasons"][0])


def champion_scorer(registry: Any, folder: Path, device: str = "auto") -> Scorer:
    """The registry's champion as a scorer, fetched (verified) on first use. A champion
    that is missing or cannot load audits nothing: the batch is accepted, with a warning,
    since a broken champion is reported by the evaluation step as well."""
    weights: list[Path | None] = []

    def score(paths: list[str]) -> np.ndarray | None:
        from histo_core.predict import score_paths

        if not weights:
            try:
                champion = registry.champion()
                weights.append(registry.fetch_weights(folder, champion.version)[1] if champion else None)
            except Exception as exc:  # noqa: BLE001 - an unusable champion must not stop validation
                log.warning("label audit skipped: the champion cannot be fetched (%s)", exc)
                weights.append(None)
        if weights[0] is None:
            return None
        try:
            return score_paths(weights[0], paths, device=device)[0]
        except Exception as exc:  # noqa: BLE001 - a champion that does not load
            log.warning("label audit skipped: the champion cannot score (%s)", exc)
            return None

    return score
