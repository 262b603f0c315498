"""The target's lock on a fresh Prefect API, in a process that has used another API before.

A test session (the harness) and a ``prefect server start``, or a worker reconfigured, put two
Prefect APIs in one process. Prefect's ``concurrency()`` helper keeps one acquisition service
per limit name, bound to the API of its first user: the lock was created on the new server
and its slot asked of the old one, which had no such limit ("must be created before
acquiring slots"). ``flows.lock.hold`` creates, takes and frees the slot on the API in force.
"""

from __future__ import annotations

import httpx
import pytest

from flows.lock import LockHeld, hold
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAME = "phasegate:bodhi.bodhi-server"


def _slots(api_url: str) -> dict[str, int]:
    limits = httpx.post(f"{api_url}/v2/concurrency_limits/filter", json={}, timeout=10).json()
    return {limit["name"]: limit["active_slots"] for limit in limits}


def test_lock_on_a_fresh_server_after_another_api_is_created_taken_and_freed_there(
    prefect_api: None, prefect_server: PrefectServer
) -> None:
    from prefect.client.orchestration import get_client

    # The session's API has seen this lock, and lost its limit (tests/flows/conftest.py
    # deletes it after each flow test, as an operator may).
    with hold(NAME, timeout_seconds=10):
        pass
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(NAME)
        harness_url = str(client.api_url).rstrip("/")

    with prefect_api_at(prefect_server.api_url):
        assert NAME not in _slots(prefect_server.api_url)  # a brand-new server: no limit yet
        with hold(NAME, timeout_seconds=10):
            assert _slots(prefect_server.api_url)[NAME] == 1
            assert NAME not in _slots(harness_url)
            with pytest.raises(LockHeld), hold(NAME, timeout_seconds=1):
                pytest.fail("a second holder got the slot")
        assert _slots(prefect_server.api_url)[NAME] == 0
