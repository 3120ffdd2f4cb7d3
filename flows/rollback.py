"""Put the previous champion back in service (a conditional write, recorded as an event)."""

from __future__ import annotations

from prefect import flow

from histo_core.config import StoreConfig
from histo_tasks.operations import roll_back


@flow(name="rollback", log_prints=True)
def rollback(store: StoreConfig = StoreConfig(), model_name: str = "pcam-cnn") -> dict[str, str]:
    moved = roll_back(store, model_name)
    print(f"champion of {model_name}: {moved['from']} -> {moved['to']}")
    return moved
