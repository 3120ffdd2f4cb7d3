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
            "triggers": triggers, "concurrency_limit": d.get("concurrency_limit"), "tags": d.get("tags"),
            "description": d["description"]}


def _served(d, flows: dict[str, Any]) -> dict[str, Any]:
    flow = flows[d.flow_name]
    schedules = [("cron", s.schedule.cron, s.schedule.timezone) if hasattr(s.schedule, "cron")
                 else ("interval", s.schedule.interval) for s in d.schedules or []]
    triggers = [(t.name, sorted(t.expect), t.model_dump(mode="json")["match"], _as_json(flow, t.parameters))
                for t in d.triggers or []]
    return {"flow": d.flow_name, "parameters": _as_json(flow, d.parameters), "schedules": schedules,
            "triggers": triggers, "concurrency_limit": d.concurrency_limit, "tags": d.tags,
            "description": d.description}


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


def test_retrain_deployments_run_one_at_a_time_and_the_trigger_listens_for_arrivals():
    for name in ("retrain-nightly", "retrain-on-new-data", "watch-new-data"):
        assert DEPLOYMENTS[name]["concurrency_limit"] == 1
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
    expected = {getattr(events, n) for n in ("BATCH_REJECTED", "DRIFT", "PROMOTED", "MODEL_REJECTED", "FAILED")}
    covered = [name for a in automations for name in a.trigger.expect]
    assert sorted(covered) == sorted(expected)
    assert all(a.trigger.match.model_dump() == {"prefect.resource.id": "histo.data-root.*"} for a in automations)
