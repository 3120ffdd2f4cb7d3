import numpy as np
import pytest

from histo_core.config import GateConfig
from histo_core.evaluate import binary_metrics
from histo_core.gate import decide


def test_binary_metrics_on_a_known_case():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    m = binary_metrics(labels, scores)
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert (m["n"], m["n_positive"]) == (5, 2)


@pytest.mark.parametrize("challenger, champion, cfg, promote, phrase", [
    (0.85, None, GateConfig(auc_floor=0.8), True, "no champion yet"),
    (0.75, None, GateConfig(auc_floor=0.8), False, "< floor 0.8000"),
    (0.90, 0.90, GateConfig(), True, ">= champion AUC 0.9000"),
    (0.89, 0.90, GateConfig(), False, "< champion AUC 0.9000"),
    (0.905, 0.90, GateConfig(min_improvement=0.01), False, "+ margin 0.0100"),
    (0.79, 0.70, GateConfig(auc_floor=0.8), False, "< floor"),
])
def test_gate_decisions_carry_their_reasons(challenger, champion, cfg, promote, phrase):
    decision = decide(challenger, champion, cfg)
    assert decision.promote is promote
    assert any(phrase in reason for reason in decision.reasons), decision.reasons


def test_delong_matches_sklearn_auc_and_bootstrap_spread():
    from sklearn.metrics import roc_auc_score

    from histo_core.evaluate import delong

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels * 0.8 + rng.normal(0, 1, 400)
    (auc,), cov = delong(labels, scores[None, :])
    assert auc == pytest.approx(roc_auc_score(labels, scores))
    boot = []
    for _ in range(400):
        idx = rng.integers(0, 400, 400)
        boot.append(roc_auc_score(labels[idx], scores[idx]))
    assert np.sqrt(cov[0, 0]) == pytest.approx(np.std(boot), rel=0.15)


def test_paired_comparison_finds_a_real_improvement_and_not_a_fake_one():
    from histo_core.evaluate import compare_paired

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 600)
    base = rng.normal(0, 1, 600)
    weak, strong = labels * 0.5 + base, labels * 1.5 + base
    better = compare_paired(labels, strong, weak)
    assert better["auc_difference"] > 0 and better["p_value"] < 0.001
    assert better["difference_ci_low"] > 0
    same = compare_paired(labels, weak + rng.normal(0, 0.01, 600), weak)
    assert same["p_value"] > 0.05


def test_gate_with_significance_needs_a_small_p_value():
    cfg = GateConfig(significance="delong", alpha=0.05)
    assert decide(0.93, 0.92, cfg, p_value=0.01).promote
    refused = decide(0.93, 0.92, cfg, p_value=0.2)
    assert not refused.promote and "p = 0.2000 >= alpha 0.05" in refused.reasons[-1]
    with pytest.raises(ValueError, match="no p-value"):
        decide(0.93, 0.92, cfg)
    assert decide(0.93, None, cfg).promote  # the first model needs only the floor


def _delong_by_definition(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance straight from DeLong et al. (1988): the m x n matrix of
    pairwise comparisons, no ranks. An independent computation to check the fast one."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # structural components
    return float(psi.mean()), float(v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(y))


def test_the_auc_ci_is_delongs_as_defined():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 1.0 + rng.normal(0, 1, 300), 1)  # rounded: ties too
    m = binary_metrics(labels, scores)
    auc, variance = _delong_by_definition(labels, scores)
    half = 1.959964 * np.sqrt(variance)
    assert m["auc"] == pytest.approx(auc, abs=1e-12)
    assert (m["auc_ci_low"], m["auc_ci_high"]) == pytest.approx((auc - half, auc + half), abs=1e-12)


def test_model_card_lists_data_metrics_comparison_and_decision():
    import pandas as pd

    from histo_core.model_card import render_model_card

    split = pd.DataFrame({"batch": ["b1", "b1", "b2", ""], "partition": ["train", "test", "train", "val"],
                          "label": [0, 1, 1, 0]})
    from histo_core.evaluate import rate_intervals

    labels = np.array([1] * 40 + [0] * 60)
    called = np.array([True] * 38 + [False] * 2 + [True] * 12 + [False] * 48)
    operating_point = {"target_sensitivity": 0.95, "threshold": 0.23, "sensitivity": 0.95, "specificity": 0.8,
                       "fitted_on": "validation", "fitted_on_images": 80, "fitted_on_positives": 33,
                       **rate_intervals(labels, called)}
    metrics = {"auc": 0.91, "auc_ci_low": 0.88, "auc_ci_high": 0.94, "threshold": 0.5, "accuracy": 0.9,
               "sensitivity": 0.85, "specificity": 0.95, "n": 100, "operating_point": operating_point}
    evaluation = {"challenger": metrics, "champion": {**metrics, "auc": 0.89}, "champion_version": "v1",
                  "comparison": {"auc_difference": 0.02, "difference_ci_low": -0.01, "difference_ci_high": 0.05,
                                 "p_value": 0.09}}
    card = render_model_card(model_name="m", version="v2", code_version="0.1.0", data_hash="abc123", split=split,
                             config={"train": {"epochs": 3}}, evaluation=evaluation,
                             decision={"outcome": "promoted", "reasons": ["beats champion"]})
    for text in ("# m v2", "**promoted** — beats champion", "`abc123`", "b2", "(root)",
                 "| 0.9100 (0.8800-0.9400) |", "champion at the time (v1)", "p = 0.0900", '"epochs":3',
                 "## Operating point", "calibrated p >= 0.230", "sensitivity 0.95 on the 80 validation images (33 "
                 "with tumour)", "sensitivity 0.950 (95% CI 0.835-0.986, Wilson; 40 tumour patches)",
                 "specificity 0.800 (95% CI 0.682-0.882, Wilson; 60 normal patches)"):
        assert text in card, text


def test_the_gate_can_refuse_a_better_auc_bought_with_missed_tumours():
    cfg = GateConfig(auc_floor=0.5, max_sensitivity_drop=0.03)
    kept = decide(0.93, 0.92, cfg, sensitivities=(0.93, 0.95))
    assert kept.promote and "sensitivity at the operating point 0.9300 >= champion's 0.9500 - 0.0300" in kept.reasons
    lost = decide(0.93, 0.92, cfg, sensitivities=(0.90, 0.95))
    assert lost.outcome == "rejected" and "0.9000 < champion's 0.9500" in lost.reasons[-1]
    assert decide(0.93, None, cfg).promote  # the first model: nothing to compare with
    assert decide(0.93, 0.92, GateConfig(auc_floor=0.5), sensitivities=(0.5, 0.95)).promote  # off by default
    with pytest.raises(ValueError, match="sensitivity at the operating point"):
        decide(0.93, 0.92, cfg)


def test_operating_point_reaches_the_target_sensitivity_on_validation():
    from histo_core.evaluate import threshold_for_sensitivity

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 1000)
    scores = labels * 1.0 + rng.normal(0, 1, 1000)
    threshold = threshold_for_sensitivity(labels, scores, 0.95)
    assert (scores[labels == 1] >= threshold).mean() >= 0.95
    assert (scores[labels == 1] >= threshold + 1e-9).mean() < 0.95  # and no higher threshold would do


def test_temperature_scaling_fixes_overconfident_logits():
    from histo_core.evaluate import expected_calibration_error, fit_temperature, sigmoid

    rng = np.random.default_rng(4)
    true_logits = rng.normal(0, 2, 5000)
    labels = (rng.random(5000) < sigmoid(true_logits)).astype(int)
    overconfident = true_logits * 3
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(3, rel=0.15)
    assert expected_calibration_error(labels, sigmoid(overconfident / temperature)) < \
        0.5 * expected_calibration_error(labels, sigmoid(overconfident))


def test_bootstrap_ci_brackets_the_auc_and_agrees_with_delong():
    from histo_core.evaluate import bootstrap_auc_ci

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    scores = labels * 1.0 + rng.normal(0, 1, 500)
    m = binary_metrics(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, 500)
    assert low < m["auc"] < high
    assert (high - low) == pytest.approx(m["auc_ci_high"] - m["auc_ci_low"], rel=0.2)


@pytest.mark.parametrize("decimals", [None, 1])  # 1: many tied scores
def test_bootstrap_ci_is_roc_auc_score_over_the_same_resamples(decimals, monkeypatch):
    from sklearn.metrics import roc_auc_score

    import histo_core.evaluate as evaluate

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 60)
    scores = labels * 0.8 + rng.normal(0, 1, 60)
    scores = np.round(scores, decimals) if decimals else scores
    draws = np.random.default_rng(3)
    aucs = [roc_auc_score(labels[i], scores[i]) for i in (draws.integers(0, 60, 60) for _ in range(300))
            if labels[i].min() != labels[i].max()]
    monkeypatch.setattr(evaluate, "BOOTSTRAP_BLOCK_CELLS", 7 * 60)  # blocks of 7 resamples, the last short
    assert evaluate.bootstrap_auc_ci(labels, scores, 300, seed=3) == pytest.approx(
        tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)


def test_full_report_and_plots(tmp_path):
    from histo_core.evaluate import full_report, plot_curves, sigmoid

    rng = np.random.default_rng(6)
    val_labels, test_labels = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    val_logits, test_logits = (val_labels - 0.5) * 4 + rng.normal(0, 1.5, 400), \
        (test_labels - 0.5) * 4 + rng.normal(0, 1.5, 400)
    report = full_report(val_labels, val_logits, test_labels, test_logits, 0.9, 200)
    assert report["operating_point"]["target_sensitivity"] == 0.9
    assert report["operating_point"]["sensitivity"] > 0.8
    op = report["operating_point"]  # with Wilson intervals around both rates, and their counts
    assert op["sensitivity_ci_low"] <= op["sensitivity"] <= op["sensitivity_ci_high"]
    assert op["specificity_ci_low"] <= op["specificity"] <= op["specificity_ci_high"]
    assert op["sensitivity_n"] + op["specificity_n"] == report["n"]
    assert report["ece"] <= report["ece_uncalibrated"] + 0.02
    paths = plot_curves(test_labels, {"model": sigmoid(test_logits)},
                        {name: tmp_path / f"{name}.png" for name in ("roc", "pr", "reliability")})
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths.values())


def test_cross_fitting_never_scores_the_operating_point_on_the_images_that_chose_it():
    """Target sensitivity 1.0: fitted on all images the threshold is the lowest tumour
    score, so an in-sample report would always say 1.0. Cross-fitted, the lowest-scored
    tumour patch is judged by a threshold chosen without it, which it never reaches."""
    from histo_core.evaluate import cross_fitted_report, sigmoid, threshold_for_sensitivity

    rng = np.random.default_rng(7)
    labels = np.r_[np.ones(20), np.zeros(200)].astype(int)
    logits = rng.normal(size=220)
    report, _ = cross_fitted_report(labels, logits, target_sensitivity=1.0, bootstrap=100)
    op = report["operating_point"]
    assert op["sensitivity"] <= 19 / 20
    assert op["fitted_on"] == "5-fold cross-fitting"
    # The threshold to deploy is the one fitted on every image.
    assert op["threshold"] == pytest.approx(
        threshold_for_sensitivity(labels, sigmoid(logits / report["temperature"]), 1.0))


def test_cross_fitted_calibration_recovers_an_overconfident_models_temperature():
    from histo_core.evaluate import cross_fitted_report, sigmoid

    rng = np.random.default_rng(8)
    true_logits = rng.normal(0, 2, 6000)
    labels = (rng.random(6000) < sigmoid(true_logits)).astype(int)
    report, calibrated = cross_fitted_report(labels, 5 * true_logits, target_sensitivity=0.9, bootstrap=100)
    assert report["temperature"] == pytest.approx(5, rel=0.1)
    assert report["ece"] < 0.03 < report["ece_uncalibrated"]
    assert report["operating_point"]["sensitivity"] == pytest.approx(0.9, abs=0.02)
    assert calibrated.shape == labels.shape and np.corrcoef(calibrated, sigmoid(true_logits))[0, 1] > 0.99


def test_cross_fitting_uses_fewer_folds_for_a_rare_class_and_refuses_one_image():
    from histo_core.evaluate import cross_fitted_report

    logits = np.linspace(-2, 2, 40)
    labels = np.zeros(40, dtype=int)
    labels[[5, 20, 39]] = 1
    report, _ = cross_fitted_report(labels, logits, bootstrap=100)
    assert report["operating_point"]["fitted_on"] == "3-fold cross-fitting"
    labels[[5, 20]] = 0
    with pytest.raises(ValueError, match="at least 2 images of each class"):
        cross_fitted_report(labels, logits, bootstrap=100)


def test_one_decision_function_gives_every_outcome():
    from histo_core.gate import Circumstances

    cfg = GateConfig(auc_floor=0.8)
    assert decide(0.95, 0.90, cfg).outcome == "promoted"
    assert decide(0.85, 0.90, cfg).outcome == "rejected"
    moved = decide(0.95, 0.90, cfg, circumstances=Circumstances(champion_moved=True))
    assert moved.outcome == "conflict" and "changed underneath" in moved.reasons[-1]
    same = decide(0.95, 0.90, cfg, circumstances=Circumstances(same_weights_as="v1"))
    assert same.outcome == "rejected" and "weights are the champion's (v1)" in same.reasons[-1]
    # a worse challenger is rejected whatever else happened: no conflict reported for it
    assert decide(0.85, 0.90, cfg, circumstances=Circumstances(champion_moved=True)).outcome == "rejected"
    broken = decide(0.85, None, cfg, circumstances=Circumstances(champion_problem="weights missing",
                                                                 champion_version="v0"))
    assert broken.outcome == "promoted" and "v0 cannot serve (weights missing)" in broken.reasons[-1]
