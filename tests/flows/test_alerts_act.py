"""Alerts that act, end to end: after a promoted rehearsal, a "Token is not active" fault; the
real Prometheus evaluates the rules ``phasegate render alerts`` writes and sends to a real
Alertmanager, whose webhook reaches ``phasegate alert-receiver`` (its own process); the
receiver emits a ``phasegate.alert.firing`` event, and the automation declared in prefect.yaml
for ``rollback-candidate`` (registered by ``phasegate.entry.register`` as ``prefect deploy``
registers it) creates a flow run, which a real ``prefect worker`` (process type) runs in a
fresh process through the deployment's entry flow: real clock, cluster and Prometheus from
``PHASEGATE_*`` settings, as in production. That flow rolls the release back at once (critical,
first day) and verifies it. Alertmanager's repeats and its resolved notification start nothing.

Real: Prometheus, Alertmanager, the receiver, the Prefect API with its event, trigger and
action services (the session's test harness server runs them, as ``prefect server start``
does), the worker and its flow-run process. Stand-ins: the emulator for the cluster and the
synthetic app for bodhi-server. The plan is tests/plans/alerts-act.yaml; prefect.yaml's
rollback-candidate entry is registered with that plan's path and name in place of the seed's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from phasegate.adapters.console import ConsoleNotifier
from phasegate.durations import parse_duration
from phasegate.entry import cli
from phasegate.entry.register import register
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.record import Release
from phasegate.rehearsal.alertmanager import AlertmanagerServer
from phasegate.rehearsal.cluster import SEED_IMAGE_REPO
from phasegate.rehearsal.scenarios import Scenario
from phasegate.rehearsal.world import world
from tests.fixtures.common import free_port, require_binary

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api"), pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "tests/plans/alerts-act.yaml"
SEED_PLAN = "deployments/plans/token-refresh-locking.yaml"
SPEED = 172800.0
POOL = "alerts-act"
PREVIOUS = f"{SEED_IMAGE_REPO}:1.5.0"
DAY = 86400.0


def _wait(what: str, check: Callable[[], Any], timeout: float, detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s\n{detail()}")
        time.sleep(0.2)
    return value


def _prefect_yaml(tmp_path: Path) -> Path:
    """prefect.yaml as written, with this test's plan in place of the seed plan."""
    text = (ROOT / "prefect.yaml").read_text()
    for old, new in ((f"plan: &plan {SEED_PLAN}", f"plan: &plan {PLAN}"),
                     ("phasegate.plan: token-refresh-locking", "phasegate.plan: alerts-act")):
        assert text.count(old) == 1, f"prefect.yaml no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "prefect.yaml"
    path.write_text(text)
    return path


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _image(w) -> str:
    stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
    return next(c["image"] for c in stable["spec"]["template"]["spec"]["containers"] if c["name"] == "bodhi-server")


def _annotations(w) -> dict[str, str]:
    return w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["metadata"].get("annotations") or {}


def test_token_not_active_after_promotion_rolls_back_once_through_alertmanager_and_an_automation(
    tmp_path: Path,
) -> None:
    require_binary("prometheus-alertmanager")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    api = str(PREFECT_API_URL.value())
    results = tmp_path / "results"
    logs = tmp_path / "logs"
    logs.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "PHASEGATE_"))}
    base_env.update(PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with get_client(sync_client=True) as client:
        if not any(p.name == POOL for p in client.read_work_pools()):
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs.append(proc)
        return proc

    def log(name: str) -> str:
        path = logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    receiver_port = free_port()
    receiver = f"http://127.0.0.1:{receiver_port}"
    start("receiver", [sys.executable, "-m", "phasegate.entry.cli", "alert-receiver", "--port", str(receiver_port)],
          base_env)
    rules = tmp_path / "rules.yaml"
    rendered = CliRunner().invoke(cli.app, ["render", "alerts", str(PLAN), "--output", str(rules)])
    assert rendered.exit_code == 0, rendered.output
    alertmanager = AlertmanagerServer(f"{receiver}/alertmanager")
    notifier = ConsoleNotifier(file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    deployment_id = None
    try:
        alertmanager.start()
        with world(load_plan(PLAN), speed=SPEED, notifier=notifier) as w:
            kubeconfig = w.emulator.write_kubeconfig(tmp_path / "kubeconfig")
            # A worker of the pool, configured as a production one is (PHASEGATE_* settings): where
            # the project is, the cluster, Prometheus; results persisted so this test can read them.
            start("worker", [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL,
                             "--type", "process", "--limit", "4"],
                  {**base_env, "PHASEGATE_HOME": str(ROOT), "PHASEGATE_KUBECONFIG": str(kubeconfig),
                   "PHASEGATE_PROMETHEUS_URL": w.prometheus.url, "PREFECT_WORKER_QUERY_SECONDS": "1",
                   "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOCAL_STORAGE_PATH": str(results)})
            deployment_id = register(_prefect_yaml(tmp_path), ["rollback-candidate"], work_pool=POOL)[
                "rollback-candidate"]
            # Loaded before the rollout, as a team's Prometheus has them; nothing fires while it is healthy.
            w.prometheus.configure_alerting([rules], [alertmanager.address], wait=False)
            promoted = run_in(w, PLAN)
            assert promoted["outcome"] == "promoted", promoted.get("halted") or promoted.get("rollback")
            assert _image(w) == w.image
            record = Release.from_annotations(_annotations(w))
            assert record is not None and record.promoted_at is not None and record.promoted_wall is not None
            # The rehearsal's clock recorded promoted-at days ahead of the wall clock the worker's
            # flow runs on: only promoted-wall means the same to both.
            assert record.promoted_at - record.promoted_wall > DAY
            _wait("the receiver answering", lambda: _up(f"{receiver}/healthz"), 60, lambda: log("receiver"))
            w.prometheus.wait_for_alertmanagers()

            # The defect shows after promotion: the new version starts failing token refreshes.
            w.app.scenario = Scenario.model_validate(
                {"name": "token-not-active-after-promotion", "faults": [{"token_not_active_per_s": 5}]})

            def stats() -> dict[str, int]:
                return httpx.get(f"{receiver}/stats", timeout=5).json()

            def runs() -> list[Any]:
                with get_client(sync_client=True) as client:
                    return client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

            def detail() -> str:
                return (f"receiver {stats()}\nalertmanager {alertmanager.alerts()}\n"
                        f"runs {[(r.name, r.state_name) for r in runs()]}\nworker:\n{log('worker')}")

            finished = _wait("the automation's flow run to finish",
                             lambda: [r for r in runs() if r.state and r.state.is_final()], 150, detail)
            run = finished[0]
            assert run.state.is_completed(), f"{run.state}\n{detail()}"
            # Alertmanager repeats the firing group every repeat_interval: the receiver drops it.
            _wait("a repeated notification", lambda: stats()["duplicates"] >= 1, 30, detail)
            # The undone version's errors leave the alert's 5 s window: Alertmanager sends resolved.
            _wait("the resolved notification", lambda: stats()["resolved"] >= 1, 60, detail)
            with get_client(sync_client=True) as client:
                def resolved_event_seen() -> bool:
                    from prefect.events.filters import EventFilter, EventNameFilter

                    page = client.read_events(filter=EventFilter(event=EventNameFilter(name=["phasegate.alert.resolved"])),
                                              limit=1)
                    return bool(page.events)

                _wait("the resolved event in Prefect", resolved_event_seen, 30, detail)
            # Time for the trigger service to act (wrongly) on what it has just seen, then count.
            time.sleep(3)
            final_runs, final_stats = runs(), stats()
            image, annotations = _image(w), _annotations(w)
    finally:
        alertmanager.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if deployment_id is not None:
            with get_client(sync_client=True) as client:
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
                client.delete_deployment(deployment_id)
                client.delete_work_pool(POOL)

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        acted = run.state.result()
    assert acted["step"] == "roll back" and acted["severity"] == "critical", acted
    # Aged on the wall clock from promoted-wall to the alert's startsAt: seconds, not the
    # rehearsal's compressed weeks, nor a clamped zero from a plan time in the future.
    age = re.search(r"critical alert (\S+) after promotion: rolling back at once", acted["reason"])
    assert age is not None, acted["reason"]
    assert 0 < parse_duration(age.group(1)).total_seconds() < 600, acted["reason"]
    rb = acted["rollback"]
    assert rb["strategy"] == "full_undo" and rb["ok"] and rb["cluster_verified"], rb
    # The full undo, on the cluster: the previous image, the record says rolled back.
    assert image == PREVIOUS
    assert annotations["phasegate.dev/phase-state"] == "rolled-back"
    assert annotations["phasegate.dev/rolled-back"] == "full:full_undo"
    assert "alert RollbackTokenNotActive (critical)" in annotations["phasegate.dev/rollback"]
    # One flow run for the one firing alert: none for a repeat or for the resolved notification.
    assert final_stats["firing_emitted"] == 1 and final_stats["duplicates"] >= 1 and final_stats["resolved"] >= 1
    assert [r.id for r in final_runs] == [run.id], [(r.name, r.state_name) for r in final_runs]
    fired = acted["fired_wall"]
    print(f"\nfrom the alert's startsAt: flow run created +{run.created.timestamp() - fired:.2f} s, "
          f"started +{run.start_time.timestamp() - fired:.2f} s, flow body +{acted['started_wall'] - fired:.2f} s")
    print(f"alert firing (startsAt) -> rollback started: {acted['rollback_started_after']:.2f} s; "
          f"rollback {rb['wall_seconds']:.2f} s wall (seed budget {rb['budget_seconds']:.0f} s); "
          f"receiver {final_stats}")
