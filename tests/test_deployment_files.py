"""prefect.yaml and the served deployments declare the same five deployments (flows,
schedules, triggers, parameters, concurrency, tags), and every entry point and parameter
set in the file is valid for its flow."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from histo_core.config import RetrainConfig
from histo_tasks.operations import ARRIVED

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def _load(entrypoint: str):
    """As a worker loads it: an installed module path, never a file of this checkout."""
    from prefect.utilities.importtools import import_object

    assert ".py" not in entrypoint and "/" not in entrypoint, f"{entrypoint}: not an installed module path"
    return import_object(entrypoint)


def _as_json(flow, parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as the flow receives them (validated, defaults filled in), as JSON."""
    validated = flow.validate_parameters(parameters)
    return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in validated.items()}


def _from_yaml(d: dict[str, Any]) -> dict[str, Any]:
    flow = _load(d["entrypoint"])
    schedules = [("cron", s["cron"], s.get("timezone", "UTC")) if "cron" in s
                 else ("interval", timedelta(seconds=s["interval"])) for s in d.get("schedules") or []]
    triggers = [(t["name"], sorted(t["expect"]), t["match"], _as_json(flow, t["parameters"]))
                for t in d.get("triggers") or []]
    return {"flow": flow.name, "parameters": _as_json(flow, d.get("parameters", {})), "schedules": schedules,
            "triggers": triggers, "concurrency": _yaml_concurrency(d.get("concurrency_limit")),
            "tags": d.get("tags"), "description": d["description"]}


def _yaml_concurrency(limit: int | dict | None) -> tuple[int, str] | None:
    if limit is None:
        return None
    return (limit, "ENQUEUE") if isinstance(limit, int) else (limit["limit"], limit["collision_strategy"])


def _served(d, flows: dict[str, Any]) -> dict[str, Any]:
    flow = flows[d.flow_name]
    schedules = [("cron", s.schedule.cron, s.schedule.timezone) if hasattr(s.schedule, "cron")
                 else ("interval", s.schedule.interval) for s in d.schedules or []]
    triggers = [(t.name, sorted(t.expect), t.model_dump(mode="json")["match"], _as_json(flow, t.parameters))
                for t in d.triggers or []]
    return {"flow": d.flow_name, "parameters": _as_json(flow, d.parameters), "schedules": schedules,
            "triggers": triggers, "concurrency": d.concurrency_limit and (
                d.concurrency_limit, d.concurrency_options.collision_strategy.value if d.concurrency_options
                else "ENQUEUE"), "tags": d.tags, "description": d.description}


def test_yaml_and_serve_declare_the_same_deployments():
    """``histo serve`` given the file's settings serves what ``prefect deploy`` deploys."""
    from histo_deployments.serve import build_deployments

    nightly = DEPLOYMENTS["retrain-nightly"]
    [cron] = nightly["schedules"]
    [interval] = DEPLOYMENTS["watch-new-data"]["schedules"]
    config = RetrainConfig.model_validate(nightly["parameters"]["config"])
    served = build_deployments(config, cron=cron["cron"], timezone=cron["timezone"],
                               watch_every=interval["interval"])
    flows = {f.name: f for f in (_load(d["entrypoint"]) for d in DEPLOYMENTS.values())}
    assert {d.name for d in served} == set(DEPLOYMENTS) == {
        "retrain-nightly", "retrain-on-new-data", "watch-new-data", "predict", "rollback"}
    for deployment in served:
        assert _served(deployment, flows) == _from_yaml(DEPLOYMENTS[deployment.name]), deployment.name


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_entrypoint_and_parameters_fit_the_flow(name):
    deployment = DEPLOYMENTS[name]
    flow = _load(deployment["entrypoint"])
    flow.validate_parameters(deployment.get("parameters", {}))  # pydantic-checks every value


def test_no_server_lease_guards_a_retrain_and_late_watchers_are_cancelled_and_the_trigger_listens():
    """A deployment concurrency limit on a retrain would be a server lease whose loss kills
    the run (issue 25); the run guard serializes retrains instead. The watcher keeps one
    slot and cancels the runs a late worker finds piled up."""
    for name in ("retrain-nightly", "retrain-on-new-data"):
        assert "concurrency_limit" not in DEPLOYMENTS[name]
        assert "histo-retrain" in DEPLOYMENTS[name]["tags"]  # the crash-retry automation matches it
    assert DEPLOYMENTS["watch-new-data"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    [trigger] = DEPLOYMENTS["retrain-on-new-data"]["triggers"]
    assert trigger["expect"] == [ARRIVED]
    config = trigger["parameters"]["config"]
    assert config["data"] == "{{ event.payload.data }}"
    assert config["store"] == DEPLOYMENTS["retrain-nightly"]["parameters"]["config"]["store"]


def test_every_event_the_retrain_emits_has_an_automation():
    """automations.yaml parses as Prefect's schema (with a block id filled in), and each
    event name of histo_tasks.events has exactly one automation that expects it."""
    import uuid

    import yaml
    from prefect.events.schemas.automations import AutomationCore

    from histo_tasks import events

    text = (REPO / "automations.yaml").read_text().replace("NOTIFICATION_BLOCK_ID", str(uuid.uuid4()))
    automations = [AutomationCore.model_validate(a) for a in yaml.safe_load(text)["automations"]]
    ours = [a for a in automations if a.trigger.match.model_dump() == {"prefect.resource.id": "histo.data-root.*"}]
    expected = {getattr(events, n) for n in ("BATCH_REJECTED", "BATCH_HELD", "DRIFT", "PROMOTED", "MODEL_REJECTED", "FAILED",
                                             "GAVE_UP")}
    covered = [name for a in ours for name in a.trigger.expect]
    assert sorted(covered) == sorted(expected)
    operations = {a.name: a for a in automations if a not in ours}
    assert set(operations) == {"histo: mark unresponsive runs crashed", "histo: retry a crashed retrain"}
    zombie, retry = operations["histo: mark unresponsive runs crashed"], operations["histo: retry a crashed retrain"]
    assert zombie.trigger.posture == "Proactive" and zombie.trigger.after == {"prefect.flow-run.heartbeat"}
    assert [a.state.value for a in zombie.actions] == ["CRASHED"]
    assert retry.trigger.expect == {"prefect.flow-run.Crashed"}
    assert [(a.state.value, a.name) for a in retry.actions] == [("SCHEDULED", "AwaitingRetry")]
