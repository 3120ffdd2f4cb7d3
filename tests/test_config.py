"""Typed configuration: partial overrides of a deployment's config for one run."""

import pytest


def test_a_run_overrides_single_fields_of_a_deployments_config():
    """What ``prefect deployment run retrain/retrain-nightly --param 'overrides={...}'`` does."""
    from pydantic import ValidationError

    from histo_core.config import GateConfig, RetrainConfig, TrainConfig, with_overrides

    deployed = RetrainConfig(data="s3://data/pcam", train=TrainConfig(epochs=30, lr=5e-4),
                             gate=GateConfig(auc_floor=0.9))
    run = with_overrides(deployed, {"train": {"epochs": 50, "seed": 5}})
    assert (run.train.epochs, run.train.seed, run.train.lr) == (50, 5, 5e-4)  # lr kept from the deployment
    assert run.data == "s3://data/pcam" and run.gate.auc_floor == 0.9
    assert with_overrides(deployed, None) is deployed and with_overrides(deployed, {}) is deployed
    with pytest.raises(ValidationError, match="epoch"):
        with_overrides(deployed, {"train": {"epoch": 50}})  # a misspelt field is refused by name
