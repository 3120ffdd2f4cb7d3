"""The label audit: a batch whose labels are quietly wrong is held, not trained on.

Row rules catch corrupt and wrong-size images; they cannot see a batch whose images are
fine and a fraction of whose labels are flipped (an annotator's mistake, a mixed-up
export). The champion can: on good batches it disagrees with the labels at a steady rate
(its own error, about 10-15% for the default model at the 0.5 threshold); flipped labels
add to that. Each new batch that passed the row rules is scored by the champion once,
when it is first judged, and its disagreement rate is compared with the pooled rate of the
other usable batches (recorded in their verdicts, plus the other new batches of this run).
A batch whose rate exceeds the reference by more than ``label_audit_margin`` and by more
than chance (one-sided two-proportion z > 3) is **held**: left out of training like a
rejected batch, listed by ``histo data batches``, announced (``histo.batch.held``), and
taken back with ``histo data readmit`` after a look.

No champion yet, no reference yet, or fewer usable rows than ``label_audit_min_rows``:
the batch is accepted and its verdict says why it was not audited.
bench/label_audit.py measures the fraction of flipped labels this catches on the shared
real patches, and how many clean batches it holds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from histo_core.batch_verdicts import USABLE
from histo_core.config import ValidationConfig

log = logging.getLogger(__name__)

# image paths -> the champion's logits (NaN: not scored); None: no champion that can score
Scorer = Callable[[list[str]], "np.ndarray | None"]
Z_LIMIT = 3.0


def disagreement(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(rows scored, rows where the champion's call at 0.5 is not the label)."""
    scored = ~np.isnan(logits)
    calls = (logits[scored] >= 0).astype(int)
    return int(scored.sum()), int((calls != labels[scored]).sum())


def excess_z(rows: int, disagree: int, ref_rows: int, ref_disagree: int) -> tuple[float, float]:
    """(rate - reference rate, one-sided two-proportion z of that excess)."""
    rate, ref = disagree / rows, ref_disagree / ref_rows
    pooled = (disagree + ref_disagree) / (rows + ref_rows)
    spread = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / rows + 1 / ref_rows))
    return rate - ref, (rate - ref) / spread


def audit_batches(verdicts: dict[str, dict[str, Any]], rows: pd.DataFrame, scorer: Scorer | None,
                  cfg: ValidationConfig) -> None:
    """Score each new accepted batch and hold those whose labels the champion disagrees
    with too often; updates ``verdicts`` in place (``audit`` on every audited batch)."""
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
        scored, disagree = disagreement(logits, usable["label"].astype(int).to_numpy())
        verdicts[batch]["audit"] = {"rows": scored, "disagree": disagree, "rate": round(disagree / max(scored, 1), 4)}
    for batch in new:
        _judge_against_reference(batch, verdicts, cfg)


def _judge_against_reference(batch: str, verdicts: dict[str, dict[str, Any]], cfg: ValidationConfig) -> None:
    audit = verdicts[batch]["audit"]
    if "rate" not in audit or not audit["rows"]:
        return
    # A batch readmitted after being held keeps its disputed labels out of the reference.
    reference = [v["audit"] for b, v in verdicts.items() if b != batch and v["verdict"] in USABLE
                 and v.get("audit", {}).get("rows") and (v.get("previous") or {}).get("verdict") != "held"]
    if not reference:
        audit["reference"] = None
        return
    ref_rows, ref_disagree = sum(a["rows"] for a in reference), sum(a["disagree"] for a in reference)
    excess, z = excess_z(audit["rows"], audit["disagree"], ref_rows, ref_disagree)
    audit.update(reference={"rows": ref_rows, "rate": round(ref_disagree / ref_rows, 4), "batches": len(reference)},
                 excess=round(excess, 4), z=round(z, 2))
    if excess > cfg.label_audit_margin and z > Z_LIMIT:
        verdicts[batch].update(verdict="held", reasons=[
            f"label audit: the champion disagrees with {audit['rate']:.0%} of its {audit['rows']} labels, against "
            f"{ref_disagree / ref_rows:.0%} on {len(reference)} usable batches (+{excess:.0%}, z {z:.1f}; "
            f"margin {cfg.label_audit_margin:.0%}): flipped or mixed-up labels? Held for review "
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
