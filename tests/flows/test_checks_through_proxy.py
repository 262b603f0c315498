"""A rollout run from outside the cluster: the staging checks name ``*.svc`` Services and
reach the pods through the API server's service proxy (the emulator's), and a run whose
checks the proxy would refuse stops at preflight, before anything is deployed.
"""

from __future__ import annotations

import io
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


def test_staging_checks_reach_the_new_pods_through_the_api_servers_proxy() -> None:
    with world(load_plan(THREE_PHASE), speed=172800.0, notifier=ConsoleNotifier(file=io.StringIO()),
               check_route="api-proxy") as w:
        report = run_in(w, THREE_PHASE)
        proxied = [r.path for r in w.emulator.requests if r.path.startswith(PROXY_PATH)]
    assert report["outcome"] == "promoted", report.get("reason")
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
