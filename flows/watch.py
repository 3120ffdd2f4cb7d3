"""Watch a data root for new labelled batches and announce them as an event."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Cancelled, State

from histo_core.config import WatchConfig
from histo_tasks import run_control
from histo_tasks.operations import announce, find_new_batches


@flow(name="watch-new-data", log_prints=True)
def watch(config: WatchConfig) -> list[str] | State:
    """Emit ``histo.data.arrived`` once per batch that arrived since the last look.

    A run due before another watcher started has nothing left to do: it ends Cancelled,
    naming that run, so a worker that comes back late looks once, not once per missed
    interval (see histo_tasks.run_control)."""
    if (looked := run_control.started_since_due()) is not None:
        message = (f"Flow run {looked.name} ({looked.id}) looked at {config.data} after this run was due: "
                   "nothing left to do.")
        get_run_logger().info(message)
        return Cancelled(message=message)
    new = find_new_batches(config.data, config.store)
    if new:
        announce(config.data, new)
    return new
