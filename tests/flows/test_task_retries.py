"""The task retry policy: a temporary error (5xx, timeout, lost connection) is retried, a
permanent one is not — also for a rollout started from a thread that runs an event loop
(Playwright's sync API, a notebook), where Prefect's result() hands out coroutines."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow, task

from phasegate.errors import PermanentError, PhasegateError, TemporaryError
from tasks.common import RETRYING

pytestmark = pytest.mark.usefixtures("prefect_api")


def attempts_until_done(first_error: Exception) -> tuple[int, str]:
    calls: list[int] = []

    @task(**RETRYING)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise first_error
        return "done"

    @flow
    def once() -> str:
        return flaky()

    try:
        outcome = once()
    except PhasegateError as exc:  # the permanent error ends the flow
        outcome = type(exc).__name__
    return len(calls), outcome


def in_a_thread_with_an_event_loop(first_error: Exception) -> tuple[int, str]:
    async def main() -> tuple[int, str]:
        # A sync call from inside a running loop, as Playwright's sync API or a notebook makes.
        return attempts_until_done(first_error)

    return asyncio.run(main())


@pytest.mark.parametrize("run", [attempts_until_done, in_a_thread_with_an_event_loop], ids=["plain", "event-loop"])
def test_a_temporary_error_is_retried_and_a_permanent_one_is_not(run) -> None:
    calls, outcome = run(TemporaryError("503 from the API server"))
    assert (calls, outcome) == (2, "done")
    calls, outcome = run(PermanentError("403 forbidden"))
    assert (calls, outcome) == (1, "PermanentError")
