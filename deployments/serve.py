"""The deployments of histo-retrain, served from one process by ``histo serve``.

* ``retrain-nightly``      — the retrain flow every night at ``cron`` in ``timezone``;
* ``retrain-on-new-data``  — the retrain flow whenever a ``histo.data.arrived`` event
  comes in; the event's data root becomes the run's ``config.data``;
* ``watch-new-data``       — the watcher every ``watch_every`` seconds; it emits that event;
* ``predict``              — batch prediction with the champion, run by hand;
* ``rollback``             — put the previous champion back, run by hand.

One retrain at a time per data root and per GPU, across both retrain deployments, is the
run guard's job (histo_core.run_guard: an OS lock, no server lease a restart could
revoke); a backlog of identical due runs is worked by its newest run only
(histo_tasks.run_control). The watcher allows one run at a time and cancels the others
(collision strategy CANCEL_NEW), so a worker that starts late runs one watcher, not one
per missed interval.
``prefect.yaml`` at the repository root declares the same deployments for
``prefect deploy`` onto a work pool.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.schedules import Cron

from histo_flows.predict import predict
from histo_flows.retrain import retrain
from histo_flows.rollback import rollback
from histo_flows.watch import watch
from histo_core.config import PredictConfig, RetrainConfig, WatchConfig
from histo_tasks.operations import ARRIVED

TAGS = ["histo"]
RETRAIN_TAGS = [*TAGS, "histo-retrain"]  # automations.yaml's crash retry matches this tag
ONE_WATCHER = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def build_deployments(config: RetrainConfig, cron: str = "0 2 * * *", timezone: str = "UTC",
                      watch_every: float = 300) -> list:
    """The five deployments, all with ``config``'s store, model name and settings."""
    retrain_parameters = {"config": config.model_dump(mode="json")}
    on_event = {"config": {**retrain_parameters["config"], "data": "{{ event.payload.data }}"}}
    return [
        retrain.to_deployment(
            name="retrain-nightly", schedules=[Cron(cron, timezone=timezone)], parameters=retrain_parameters,
            tags=RETRAIN_TAGS, description="Retrain every night on the configured data root."),
        retrain.to_deployment(
            name="retrain-on-new-data", parameters=retrain_parameters, tags=RETRAIN_TAGS,
            triggers=[DeploymentEventTrigger(name="new labelled data", expect={ARRIVED},
                                             match={"prefect.resource.id": "histo.data-root.*"},
                                             parameters=on_event)],
            description=f"Retrain when a {ARRIVED} event announces new batches."),
        watch.to_deployment(
            name="watch-new-data", interval=timedelta(seconds=watch_every), tags=TAGS, concurrency_limit=ONE_WATCHER,
            parameters={"config": WatchConfig(data=config.data, store=config.store).model_dump(mode="json")},
            description="Look for new labelled batches and announce them."),
        predict.to_deployment(
            name="predict", tags=TAGS,
            parameters={"config": PredictConfig(data="", store=config.store,
                                                model_name=config.model_name).model_dump(mode="json")},
            description="Score a folder of patches with the champion; set config.data in the form."),
        rollback.to_deployment(
            name="rollback", tags=TAGS,
            parameters={"store": config.store.model_dump(mode="json"), "model_name": config.model_name},
            description="Re-point the champion to the previous version."),
    ]


def serve_deployments(config: RetrainConfig, cron: str = "0 2 * * *", timezone: str = "UTC",
                      watch_every: float = 300) -> None:
    """Register the deployments with the Prefect API and run their flows until interrupted."""
    serve(*build_deployments(config, cron, timezone, watch_every))
