"""Watch a data root for new labelled batches and announce them as an event."""

from __future__ import annotations

from prefect import flow

from histo_core.config import WatchConfig
from histo_tasks.operations import announce, find_new_batches


@flow(name="watch-new-data", log_prints=True)
def watch(config: WatchConfig) -> list[str]:
    """Emit ``histo.data.arrived`` once per batch that arrived since the last look."""
    new = find_new_batches(config.data, config.store)
    if new:
        announce(config.data, new)
    return new
