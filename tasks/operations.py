"""Prefect tasks for the everyday operations around retraining: watch, predict, roll back."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.tasks import exponential_backoff

from histo_core.config import PredictConfig, StoreConfig
from histo_core.data.sources import DataSourceError
from histo_core.errors import TooFewImagesToAdapt
from histo_core.registry import open_registry
from histo_core.storage import open_store
from histo_core.watch import batch_uri, claim_new_batches
from histo_tasks.retries import retry_unless

ARRIVED = "histo.data.arrived"


@task(name="claim-new-batches", retries=3, retry_delay_seconds=exponential_backoff(2), cache_policy=NO_CACHE)
def find_new_batches(data: str, store: StoreConfig) -> list[str]:
    new = claim_new_batches(data, open_store(store), store)
    get_run_logger().info("new batches under %s: %s", data, new or "none")
    return new


@task(name="announce-batches", cache_policy=NO_CACHE)
def announce(data: str, batches: list[str]) -> None:
    """Emit ``histo.data.arrived``; the retrain-on-new-data deployment's trigger listens."""
    emit_event(event=ARRIVED, resource={"prefect.resource.id": f"histo.data-root.{data}"},
               payload={"data": data, "batches": [batch_uri(data, b) for b in batches], "batch_ids": batches})
    get_run_logger().info("emitted %s for %d batch(es)", ARRIVED, len(batches))


# Not retried: data that fails the same way every time (no images; too few to adapt to).
@task(name="score-patches", retries=2, retry_delay_seconds=exponential_backoff(5),
      retry_condition_fn=retry_unless(DataSourceError, TooFewImagesToAdapt), cache_policy=NO_CACHE)
def score_patches(config: PredictConfig, workdir: str) -> dict[str, Any]:
    """Write the predictions CSV; images that could not be scored are counted and listed
    in its errors CSV, not retried (a retry would fail on them again)."""
    # Imported here, not at the top: the watcher's flow imports this module every few
    # minutes and has no use for torch (about 9 s of CPU per run on a 2-core machine).
    from histo_core.predict import predict_folder, weights_for

    weights, which = weights_for(config, workdir)
    get_run_logger().info("scoring %s with %s", config.data, which)
    result = predict_folder(weights, config.data, config.out, config.device, config.batch_size, tta=config.tta,
                            order=config.order, adapt=config.adapt_to_data)
    return {"csv": str(result.csv), "errors_csv": result.errors_csv and str(result.errors_csv),
            "scored": result.scored, "failed": result.failed, "model": which}


@task(name="roll-back-champion", retries=2, retry_delay_seconds=exponential_backoff(2), cache_policy=NO_CACHE)
def roll_back(store: StoreConfig, model_name: str) -> dict[str, str]:
    old, new = open_registry(store, model_name).rollback()
    get_run_logger().info("champion of %s rolled back: %s -> %s", model_name, old, new)
    return {"from": old, "to": new}
