"""``histo serve``: serve the retrain deployments from this process.

* ``retrain-nightly`` — every night at ``cron`` in ``timezone``;
* ``retrain-manual`` — no schedule; run it from the Prefect UI, whose form is built from
  ``RetrainConfig``.

Both allow one run at a time, so a slow night never piles runs up.
"""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.retrain import retrain
from histo_core.config import RetrainConfig


def build_deployments(config: RetrainConfig, cron: str = "0 2 * * *", timezone: str = "UTC") -> list:
    parameters = {"config": config.model_dump()}
    return [
        retrain.to_deployment(name="retrain-nightly", schedules=[Cron(cron, timezone=timezone)],
                              parameters=parameters, concurrency_limit=1, tags=["histo", "retrain"],
                              description="Nightly retrain on the configured data root."),
        retrain.to_deployment(name="retrain-manual", parameters=parameters, concurrency_limit=1,
                              tags=["histo", "retrain"],
                              description="Retrain on demand; edit the parameters in the UI form."),
    ]


def serve_deployments(config: RetrainConfig, cron: str = "0 2 * * *", timezone: str = "UTC") -> None:
    """Register the deployments with the Prefect API and run their flows until interrupted."""
    serve(*build_deployments(config, cron, timezone))
