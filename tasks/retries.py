"""When a task's retries are worth it: a store or network hiccup may pass, an error that
says what is wrong with the data fails the same way on every attempt."""

from __future__ import annotations

from typing import Callable

from prefect.states import State

RetryCondition = Callable[[object, object, State], bool]


def retry_unless(*permanent: type[BaseException]) -> RetryCondition:
    """A ``retry_condition_fn`` that retries any failure but ``permanent`` ones."""

    def worth_retrying(task: object, task_run: object, state: State) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except Exception:  # noqa: BLE001 - anything else may be transient
            return True
        return False

    return worth_retrying
