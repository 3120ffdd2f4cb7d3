"""prefect.yaml and the served deployments declare the same five deployments, and every
entry point and parameter set in the file is valid for its flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from histo_core.config import RetrainConfig, StoreConfig
from histo_tasks.operations import ARRIVED

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def _load(entrypoint: str):
    """As a worker loads it: an installed module path, never a file of this checkout."""
    from prefect.utilities.importtools import import_object

    assert ".py" not in entrypoint and "/" not in entrypoint, f"{entrypoint}: not an installed module path"
    return import_object(entrypoint)


def test_yaml_and_serve_declare_the_same_deployments():
    from histo_deployments.serve import build_deployments

    served = build_deployments(RetrainConfig(data="/data", store=StoreConfig(uri="/store")))
    assert {d.name for d in served} == set(DEPLOYMENTS) == {
        "retrain-nightly", "retrain-on-new-data", "watch-new-data", "predict", "rollback"}


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
