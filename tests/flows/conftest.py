"""Every flow test gets a fresh cluster; it gets a fresh Prefect-side lock for its target too,
so a test that fails while a rollout holds the lock cannot refuse every test after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fresh_rollout_locks(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "prefect_api" not in request.fixturenames:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for limit in client.read_global_concurrency_limits(limit=200):
            if limit.name.startswith("phasegate:"):
                client.delete_global_concurrency_limit_by_name(limit.name)
