"""What a retrain run asks the Prefect API before it starts work: is a newer identical run
already due (then this one is superseded), and how many times has this run been tried.

Late schedules: a worker that was down for three nights finds three due nightly runs, and
one watcher per interval. Each run of a deployment asks whether a run of the same
deployment with the same parameters is due later than itself and already due now
(waiting, running or completed); if so it ends Cancelled, naming that run, and only the
newest one works. A run with different
parameters (a manual run with overrides) never supersedes a scheduled one or the reverse.

A watcher is asked one more thing: has a run of its deployment started since it was due?
Then the look it was scheduled for has been taken. The deployment's CANCEL_NEW limit
cancels watchers submitted while one runs, but a late worker takes its backlog in batches
(its process limit, its poll interval), and a watcher of a later batch would otherwise
look again once the first has finished.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                            FlowRunFilterExpectedStartTime, FlowRunFilterStartTime, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.runtime import flow_run

# A newer run supersedes this one while it waits, runs or once it has completed; one that
# failed, crashed or was itself superseded (Cancelled) did not do this run's work.
_SUPERSEDING = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.COMPLETED]


def _due(run: FlowRun) -> dt.datetime:
    return run.expected_start_time or run.created or dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def superseded_by() -> FlowRun | None:
    """The newest run of this run's deployment with the same parameters that is due now
    and was due after this one; None outside a deployment or when this run is the newest."""
    now = dt.datetime.now(dt.timezone.utc)
    me, siblings = _siblings(lambda me: FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_SUPERSEDING)),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=now)))
    newer = [r for r in siblings if (_due(r), str(r.id)) > (_due(me), str(me.id))]
    return max(newer, key=lambda r: (_due(r), str(r.id)), default=None)


def started_since_due() -> FlowRun | None:
    """The first run of this run's deployment with the same parameters that started at or
    after the time this run was due and is running or has completed; None outside a
    deployment or when there is none."""
    _, siblings = _siblings(lambda me: FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.COMPLETED])),
        start_time=FlowRunFilterStartTime(after_=_due(me))))
    return min(siblings, key=lambda r: r.start_time, default=None)


def _siblings(which: Callable[[FlowRun], FlowRunFilter]) -> tuple[FlowRun | None, list[FlowRun]]:
    """This flow run, and the other runs of its deployment with the same parameters that
    ``which(this run)`` selects; no others outside a deployment."""
    run_id = flow_run.get_id()
    if run_id is None:
        return None, []
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(run_id)
        if me.deployment_id is None:
            return me, []
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[me.deployment_id])),
            flow_run_filter=which(me))
    return me, [r for r in runs if r.id != me.id and _same_parameters(r, me)]


def _same_parameters(a: FlowRun, b: FlowRun) -> bool:
    return _normalised(a.parameters) == _normalised(b.parameters)


def _normalised(parameters: dict[str, Any]) -> dict[str, Any]:
    """``overrides: None`` and no ``overrides`` are the same request."""
    return {k: v for k, v in parameters.items() if v is not None}


def run_count() -> int:
    """How many times this flow run has entered Running (1 on the first try; a crashed run
    rescheduled by the retry automation counts up)."""
    return flow_run.get_run_count() or 1
