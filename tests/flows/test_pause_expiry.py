"""A pause that timed out leaves the run able to pause again, whoever saw the timeout first.

The flow sees its pause time out on its own clock; a ``prefect server start`` also fails
every run paused past its timeout (its FailExpiredPauses service, every 5 s; the ephemeral
API of the test harness and of a rehearsal runs no such service). Under load the server can
be first: the run is then Failed while the flow goes on, and a halted rollout's watch, which
pauses next, was refused ("Run is already in terminal state FAILED") — the rehearsal died
with exit 1 and a canary left serving unwatched. Both orders are run here for real.
"""

from __future__ import annotations

import time
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from flows.approval import PAUSE_EXPIRED_MESSAGE, running_again
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = pytest.mark.slow

# The server's expiry service runs every 5 s (server.services.pause_expirations.loop_seconds).
SERVER_EXPIRY_WAIT = 30.0


def _state(flow_run_id: str):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


@flow(name="pause-twice")
def pause_twice(wait_for_the_server: bool) -> dict[str, object]:
    ctx = FlowRunContext.get()
    assert ctx is not None and ctx.flow_run is not None
    run_id = str(ctx.flow_run.id)
    seen: dict[str, object] = {}
    try:
        pause_flow_run(timeout=1, poll_interval=0.2)
    except FlowPauseTimeout:
        seen["first"] = "timeout"
    if wait_for_the_server:
        deadline = time.monotonic() + SERVER_EXPIRY_WAIT
        while not (_state(run_id).is_failed()) and time.monotonic() < deadline:
            time.sleep(0.2)
    before = _state(run_id)
    seen["before"] = (before.type.value, before.message)
    running_again(run_id)
    seen["after"] = _state(run_id).type.value
    try:
        pause_flow_run(timeout=1, poll_interval=0.2)
    except FlowPauseTimeout:
        seen["second"] = "timeout"
    return seen


@pytest.mark.timeout(180)
def test_a_run_whose_pause_timed_out_pauses_again_whoever_saw_the_timeout_first(
        prefect_server: PrefectServer) -> None:
    with prefect_api_at(prefect_server.api_url):
        flow_first = pause_twice(wait_for_the_server=False)
        server_first = pause_twice(wait_for_the_server=True)
    assert flow_first["before"][0] == "PAUSED"  # type: ignore[index]
    assert server_first["before"] == ("FAILED", PAUSE_EXPIRED_MESSAGE), "the server's expiry service failed the run"
    for seen in (flow_first, server_first):
        assert seen["after"] == "RUNNING"
        assert seen["first"] == seen["second"] == "timeout", "the second pause was taken, and timed out in turn"
