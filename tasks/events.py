"""The events a retrain emits, for automations an operator points at Slack or e-mail.

Every event's resource is the data root (``histo.data-root.<data>``, as the watcher's
``histo.data.arrived``) and its payload names the run, so an automation can link to it:

    histo.batch.rejected    a batch judged bad for the first time: left out of training
    histo.batch.held        a batch whose labels the champion disputes (label audit): left out
    histo.data.drift        the newest batch's colours moved beyond the threshold
    histo.model.promoted    the challenger became the champion
    histo.model.rejected    the challenger was judged and not promoted (or lost a conflict)
    histo.retrain.failed    the run failed (data set rejected, store unreachable, a bug)
    histo.retrain.gave-up   the run crashed max_attempts times and is no longer retried

``automations.yaml`` at the repository root holds one automation per event.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

BATCH_REJECTED = "histo.batch.rejected"
BATCH_HELD = "histo.batch.held"
DRIFT = "histo.data.drift"
PROMOTED = "histo.model.promoted"
MODEL_REJECTED = "histo.model.rejected"
FAILED = "histo.retrain.failed"
GAVE_UP = "histo.retrain.gave-up"


def emit(event: str, data: str, payload: dict[str, Any]) -> None:
    emit_event(event=event, resource={"prefect.resource.id": f"histo.data-root.{data}"},
               payload={"data": data, **payload})


def emit_validation_events(data: str, run: dict[str, Any], judged: dict[str, dict[str, Any]],
                           drift: dict[str, Any] | None) -> None:
    """One event per newly rejected or held batch, and one for a drift warning."""
    for batch, verdict in judged.items():
        if verdict["verdict"] in ("rejected", "held"):
            emit(BATCH_REJECTED if verdict["verdict"] == "rejected" else BATCH_HELD, data,
                 {**run, "batch": batch, "reasons": verdict["reasons"], "audit": verdict.get("audit")})
    if drift and drift.get("warning"):
        emit(DRIFT, data, {**run, **drift})


def emit_decision_event(data: str, run: dict[str, Any], decision: dict[str, Any]) -> None:
    event = PROMOTED if decision["outcome"] == "promoted" else MODEL_REJECTED
    emit(event, data, {**run, **{k: decision.get(k) for k in ("outcome", "version", "champion", "reasons",
                                                              "challenger_auc", "champion_auc")}})
