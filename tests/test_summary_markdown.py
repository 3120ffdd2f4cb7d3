"""The run summary (a Prefect markdown artifact) carries ids and reasons from other
people's data: each stays one inert table cell (issue 22)."""

from __future__ import annotations

import re

from histo_flows.retrain import _summary

HOSTILE = ["<script>alert(1)</script>", "a|b|c", "x\ny", "[click](http://evil.example)", "`code`", "<b>1</b>"]


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_hostile_ids_and_reasons_stay_single_inert_cells():
    validation = {"counts": {"ok": 1}, "labels": {"0": 1}, "drift": None,
                  "rows": [{"id": h, "status": "quarantined", "reason": h} for h in HOSTILE],
                  "batches": {"b1": {"verdict": "rejected", "decided": "2026-12-01", "reasons": HOSTILE}}}
    history = [{"epoch": 1, "val_loss": 0.5, "val_auc": 0.9, "improved": True}]
    decision = {"outcome": "rejected", "version": "v1", "champion_auc": None, "challenger_auc": 0.9,
                "reasons": ["floor"], "previous_champion": None, "champion": None}
    text = _summary(validation, history, decision, "file:///store")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 3 + len(HOSTILE)  # two headers, the batch row, one row per quarantined id
    [batch_row] = [row for row in rows if row.startswith("| b1 ")]
    assert _unescaped_pipes(batch_row) == 5  # | batch | verdict | since | reasons |
    quarantined = rows[-len(HOSTILE):]
    assert all(_unescaped_pipes(row) == 3 for row in quarantined)  # | id | reason |
    assert "<script" not in text and "<b>" not in text and "[click](" not in text
    assert "&lt;script&gt;" in text and "\\[click\\](" in text  # shown, not rendered
