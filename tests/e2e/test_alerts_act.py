"""Alerts that act, end to end with real parts: the seed plan promoted on the emulator, then a
"Token is not active" fault injected after promotion; the real Prometheus evaluates the rules
``phasegate render alerts`` writes and sends to a real Alertmanager, whose webhook reaches
``phasegate alert-receiver`` (its own process); the receiver emits a Prefect event, and the
automation declared in prefect.yaml (registered by ``phasegate.entry.register`` as ``prefect
deploy`` registers it) creates a rollback-candidate flow run on a real ``prefect server start``.

The test plays the worker: it executes each flow run the automation created, in this process,
with the rehearsal world's run context (a deployment's entry flow would build it from
PHASEGATE_* settings instead). Alertmanager's repeats and its resolved notification must start
nothing more. The seed's ``[5m]`` alert window would keep the alert firing for five real minutes
after the undo; the test acts those minutes out by deleting the fault's samples (Prometheus'
admin API), after which Prometheus resolves the alert as it would then.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from phasegate import runctx
from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import load_plan
from phasegate.rehearsal.alertmanager import AlertmanagerServer
from phasegate.rehearsal.scenarios import Scenario
from phasegate.rehearsal.world import world
from tests.fixtures.common import free_port, require_binary
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
SEED = "deployments/plans/token-refresh-locking.yaml"
SPEED = 172800.0


def _stats(port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()


def _candidate_runs(server: PrefectServer, deployment_id: str) -> list[dict]:
    query = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return list(httpx.post(f"{server.api_url}/flow_runs/filter", json=query, timeout=5).json())


def _wait(what: str, check, timeout: float, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s\n{detail()}")
        time.sleep(0.2)


def test_token_not_active_after_promotion_pages_and_rolls_back_once(
    prefect_server: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("prometheus-alertmanager")
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from flows.runbook import rollback_candidate
    from phasegate.entry.register import register
    from phasegate.entry.rehearse import run_in

    # The rehearsal's approver answers from threads of its own, which start without this
    # thread's Prefect settings context and read the environment instead.
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    monkeypatch.chdir(ROOT)  # the deployment's plan_path is relative to the project, as a worker's pull step sets it
    rules = tmp_path / "rules.yaml"
    rendered = subprocess.run([sys.executable, "-m", "phasegate.entry.cli", "render", "alerts", SEED],
                              capture_output=True, text=True, check=True)
    rules.write_text(rendered.stdout)

    receiver_port = free_port()
    env = {k: v for k, v in prefect_server.env().items() if not k.startswith("SLACK_")}
    receiver_log = (tmp_path / "receiver.log").open("wb")
    receiver = subprocess.Popen([sys.executable, "-m", "phasegate.entry.cli", "alert-receiver", "--port",
                                 str(receiver_port)], env=env, stdout=receiver_log, stderr=subprocess.STDOUT)
    alertmanager = AlertmanagerServer(f"http://127.0.0.1:{receiver_port}/alertmanager")
    notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    try:
        alertmanager.start()
        _wait("the receiver answering", lambda: _receiver_up(receiver_port), 30,
              lambda: (tmp_path / "receiver.log").read_text())
        with temporary_settings({PREFECT_API_URL: prefect_server.api_url, PREFECT_UI_URL: prefect_server.url}), \
                world(load_plan(SEED), speed=SPEED, notifier=notifier) as w:
            ids = register(ROOT / "prefect.yaml", ["rollback-candidate"])
            deployment_id = str(ids["rollback-candidate"])
            promoted = run_in(w, SEED)
            assert promoted["outcome"] == "promoted", promoted.get("halted") or promoted.get("rollback")
            w.prometheus.configure_alerting([rules], [alertmanager.address])

            # The defect shows after promotion: the new version starts failing token refreshes.
            w.app.scenario = Scenario.model_validate(
                {"name": "token-not-active-after-promotion", "faults": [{"token_not_active_per_s": 5}]})
            ctx = w.run_context(approval_floor=1.0, on_pause=None)
            results: list[dict] = []
            executed: set[str] = set()

            def work() -> None:
                for run in _candidate_runs(prefect_server, deployment_id):
                    if run["id"] in executed:
                        continue
                    executed.add(run["id"])
                    with get_client(sync_client=True) as client:
                        flow_run = client.read_flow_run(run["id"])
                    with runctx.use(ctx):
                        results.append(run_flow(rollback_candidate, flow_run=flow_run,
                                                parameters=flow_run.parameters, return_type="result"))

            def rolled_back() -> bool:
                work()
                return any("rollback" in r for r in results)

            _wait("a rollback started by the alert", rolled_back, 120,
                  lambda: f"{_stats(receiver_port)}\n{alertmanager.alerts()}\n{results}")
            # Alertmanager repeats the firing group every repeat_interval: the receiver drops it.
            _wait("a repeated notification", lambda: _stats(receiver_port)["duplicates"] >= 1, 30,
                  lambda: str(_stats(receiver_port)))

            # Five minutes later the [5m] window holds no error of the undone version any more.
            _delete(w.prometheus.url, "token_refresh_errors_total")
            _wait("the resolved notification", lambda: _stats(receiver_port)["resolved"] >= 1, 60,
                  lambda: f"{_stats(receiver_port)}\n{alertmanager.alerts()}")
            time.sleep(3)  # time for anything (wrongly) triggered by the resolved alert to appear
            work()
            stats = _stats(receiver_port)
            runs = _candidate_runs(prefect_server, deployment_id)
    finally:
        alertmanager.close()
        receiver.terminate()
        receiver.wait(10)
        receiver_log.close()

    rollbacks = [r for r in results if "rollback" in r]
    assert len(rollbacks) == 1, results
    (acted,) = rollbacks
    assert acted["severity"] == "critical" and acted["step"] == "roll back"
    rb = acted["rollback"]
    assert rb["strategy"] == "full_undo" and rb["ok"] and rb["cluster_verified"]
    stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
    image = next(c["image"] for c in stable["spec"]["template"]["spec"]["containers"] if c["name"] == "bodhi-server")
    assert image != w.image
    assert stable["metadata"]["annotations"]["phasegate.dev/phase-state"] == "rolled-back"
    # One flow run per distinct firing alert, none for a repeat or the resolved notification.
    assert len(runs) == stats["firing_emitted"] == len(results), (stats, results)
    assert all(r["step"] in ("ignore", "refused") for r in results if r is not acted), results
    print(f"\nalert firing -> rollback started: {acted['rollback_started_after']:.2f} s "
          f"(rollback {rb['wall_seconds']:.2f} s wall vs the seed's {rb['budget_seconds']:.0f} s); receiver {stats}")


def _receiver_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _delete(prometheus: str, metric: str) -> None:
    for path in (f"/api/v1/admin/tsdb/delete_series?match[]={metric}", "/api/v1/admin/tsdb/clean_tombstones"):
        with urllib.request.urlopen(urllib.request.Request(prometheus + path, method="POST"), timeout=10) as r:
            assert r.status in (200, 204), json.loads(r.read() or b"{}")
