"""The model card filed with every version: what it was trained on, how, and how good it is."""

from __future__ import annotations

from typing import Any

import pandas as pd


def _metrics_line(name: str, m: dict[str, Any]) -> str:
    op = m.get("operating_point")
    at_op = (f"{op['threshold']:.3f}: sens {op['sensitivity']:.3f}, spec {op['specificity']:.3f}"
             if op else "—")
    ece = f"{m['ece']:.4f} (T={m['temperature']:.2f})" if "ece" in m else "—"
    return (f"| {name} | {m['auc']:.4f} ({m['auc_ci_low']:.4f}-{m['auc_ci_high']:.4f}) | "
            f"{m['accuracy']:.4f} | {m['sensitivity']:.4f} | {m['specificity']:.4f} | {at_op} | {ece} | {m['n']} |")


def _operating_point_section(m: dict[str, Any]) -> list[str]:
    """Where to read the model's calls: the threshold, what it was chosen on, and its
    sensitivity and specificity on the hold-out with their 95% intervals and counts."""
    op = m.get("operating_point")
    if not op or "sensitivity_ci_low" not in op:
        return []
    chosen_on = (f"the {op['fitted_on_images']} validation images ({op['fitted_on_positives']} with tumour) of this "
                 "run's data" if op.get("fitted_on") == "validation" else op.get("fitted_on", "?"))
    return ["", "## Operating point", "",
            f"Call a patch tumour at calibrated p >= {op['threshold']:.3f}: the highest threshold reaching "
            f"sensitivity {op['target_sensitivity']} on {chosen_on}. On the {m['n']} hold-out test images:", "",
            f"- sensitivity {op['sensitivity']:.3f} (95% CI {op['sensitivity_ci_low']:.3f}-"
            f"{op['sensitivity_ci_high']:.3f}, Wilson; {op['sensitivity_n']} tumour patches)",
            f"- specificity {op['specificity']:.3f} (95% CI {op['specificity_ci_low']:.3f}-"
            f"{op['specificity_ci_high']:.3f}, Wilson; {op['specificity_n']} normal patches)", "",
            "Chosen and measured on images from the same slides as the training images: on unseen slides "
            "expect a lower specificity at this threshold (see Limitations)."]


INTENDED_USE = (
    "Research use: ranking 96x96 H&E patches of lymph-node sections by the probability of metastatic "
    "tumour in their centre 32x32 region, as in PatchCamelyon. Not a medical device; not for diagnosis.")
LIMITATIONS = [
    "The hold-out images come from the same slides as the training images (the split is by image "
    "content; the data carry no slide ids), so the hold-out AUC is optimistic for slides, labs and "
    "scanners the model has not seen.",
    "Trained on patches at PCam's magnification (10x); other magnifications, "
    "stains or tissue types are outside what it was trained on.",
    "The probabilities are calibrated (temperature scaling) on the validation images of the same data.",
]


def render_model_card(*, model_name: str, version: str, code_version: str, data_hash: str,
                      split: pd.DataFrame, config: dict[str, Any], evaluation: dict[str, Any],
                      decision: dict[str, Any], training: dict[str, Any] | None = None) -> str:
    """Markdown for one version. ``split`` is the run's split table (batch, label, partition);
    ``training`` the model folder's ``training.json``."""
    import datetime as dt

    training = training or {}
    counts = split.assign(batch=split["batch"].replace("", "(root)")) \
        .groupby(["batch", "partition", "label"]).size().unstack(["partition", "label"], fill_value=0)
    lines = [
        f"# {model_name} {version}", "",
        f"- outcome: **{decision['outcome']}** — " + "; ".join(decision["reasons"]),
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- code version: {code_version}",
        f"- data manifest hash: `{data_hash}`",
        f"- trained on: {training.get('device', 'unknown')} in {training.get('seconds', 0) / 60:.1f} min, "
        f"{training.get('epochs', '?')} epochs, best (lowest val loss) at epoch {training.get('best_epoch', '?')}; "
        f"torch {training.get('torch', '?')}, torchvision {training.get('torchvision', '?')}", "",
        "## Intended use", "", INTENDED_USE, "",
        "## Limitations", "", *[f"- {item}" for item in LIMITATIONS], "",
        "## Data (images per batch, partition and label)", "",
        "```", counts.to_string(), "```", "",
        "## Hold-out metrics", "",
        "AUC with its DeLong 95% CI; accuracy, sensitivity and specificity at p = 0.5 after "
        "temperature scaling; the operating point is the threshold chosen on validation for "
        "the target sensitivity; ECE is the calibration error after temperature scaling"
        + (" (all with 8-way test-time augmentation)." if evaluation.get("tta") else "."), "",
        "| model | AUC (95% CI) | accuracy | sensitivity | specificity | operating point | ECE | images |",
        "|---|---|---|---|---|---|---|---|",
        _metrics_line(f"this version ({version})", evaluation["challenger"]),
    ]
    if evaluation.get("champion"):
        lines.append(_metrics_line(f"champion at the time ({evaluation['champion_version']})", evaluation["champion"]))
        c = evaluation["comparison"]
        lines += ["", f"Paired DeLong comparison: AUC difference {c['auc_difference']:+.4f} "
                      f"(95% CI {c['difference_ci_low']:+.4f} to {c['difference_ci_high']:+.4f}), "
                      f"one-sided p = {c['p_value']:.4f}."]
    lines += _operating_point_section(evaluation["challenger"])
    lines += ["", "## Configuration", "", "```json", pd.Series(config).to_json(indent=2), "```", ""]
    return "\n".join(lines)
