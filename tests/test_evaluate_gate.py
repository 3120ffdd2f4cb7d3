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
