"""A rollout run from outside the cluster: the staging checks name ``*.svc`` Services and
reach the pods through the API server's service proxy (the emulator's), and a run whose
checks the proxy would refuse stops at preflight, before anything is deployed.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.rollout import PreflightFailed
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
THREE_PHASE = ROOT / "tests/plans/three-phase.yaml"
PROXY_PATH = "/api/v1/namespaces/bodhi-staging/services/http:bodhi-server:8080/proxy/"

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def _logs(since: datetime) -> list[str]:
    """Every log message the Prefect API holds from ``since`` on (the rollout's, its phases'
    subflows' and their tasks'), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are shipped in batches by a background worker
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(
            log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=since)), sort=LogSort.TIMESTAMP_ASC, limit=200)]


def test_staging_checks_reach_the_new_pods_through_the_api_servers_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite keeps Prefect at WARNING; this test reads the run's INFO lines, as the UI shows them.
    monkeypatch.setattr(logging.getLogger("prefect.task_runs"), "level", logging.INFO)
    since = datetime.now(UTC)
    with world(load_plan(THREE_PHASE), speed=172800.0, notifier=ConsoleNotifier(file=io.StringIO()),
               check_route="api-proxy") as w:
        report = run_in(w, THREE_PHASE)
        proxied = [r.path for r in w.emulator.requests if r.path.startswith(PROXY_PATH)]
    assert report["outcome"] == "promoted", report.get("reason")
    # Preflight said so in the run's log, before staging was deployed.
    logs = _logs(since)
    said = next(i for i, m in enumerate(logs) if "check staging/load: GET http://bodhi-server.bodhi-staging.svc:8080"
                "/token/refresh goes through the API server's service proxy" in m)
    assert said < next(i for i, m in enumerate(logs) if "bodhi-staging/bodhi-server container" in m), logs
    staging = next(p for p in report["phases"] if p["name"] == "staging")
    assert [(c["name"], c["route"], c["failures"]) for c in staging["checks"]] == [
        ("smoke", "api-proxy", 0), ("load", "api-proxy", 0)]
    assert proxied.count(PROXY_PATH + "health") == 1 and proxied.count(PROXY_PATH + "token/refresh") == 50


def test_a_check_the_proxy_is_forbidden_for_stops_the_run_at_preflight_with_nothing_deployed() -> None:
    with world(load_plan(THREE_PHASE), speed=172800.0, notifier=ConsoleNotifier(file=io.StringIO()),
               check_route="api-proxy") as w:
        w.emulator.rbac.deny("get", "services/proxy")
        before = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")["spec"]
        with pytest.raises(PreflightFailed) as refused:
            run_in(w, THREE_PHASE)
        after = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")["spec"]
    problems = str(refused.value)
    assert f"phases[staging].checks[smoke] ({THREE_PHASE}:39): " in problems, problems
    assert f"phases[staging].checks[load] ({THREE_PHASE}:40): " in problems
    assert "RBAC denies get services/proxy (http:bodhi-server:8080) in namespace bodhi-staging" in problems
    assert after == before
