"""`phasegate doctor` as a user runs it, in a subprocess: the emulated cluster, a real
Prometheus and the loopback Slack server, configured only through the environment.

Doctor asks Prometheus for ``vector(1)`` only, so it gets a Prometheus of its own with no
targets (``disposable_prometheus``, ~0.1 s) rather than the session's, which waits ~13 s
for scraped data this test never reads.

The commands are registered in ``phasegate.entry.cli`` by its owner; the subprocess registers
``doctor_command`` on a Typer app of its own so this test does not depend on that wiring.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from phasegate.clock import RealClock
from phasegate.plan import load_plan
from phasegate.rehearsal.app import NEW_IMAGE, SyntheticApp
from phasegate.rehearsal.cluster import ClusterEmulator
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.rehearsal.slack_server import SlackServer
from tests.fixtures.common import free_port
from tests.fixtures.prometheus import canary_world

ROOT = Path(__file__).resolve().parents[2]
SEED_PLAN = ROOT / "deployments/plans/token-refresh-locking.yaml"
TRACK_PLAN = ROOT / "tests/plans/track-labels.yaml"
DOCTOR = ("import typer; from phasegate.entry.doctor import doctor_command; "
          "app = typer.Typer(add_completion=False); app.command('doctor')(doctor_command); app()")
PROMETHEUS_TOKEN = "prom-bearer-doctor-0123456789"


@pytest.fixture
def env(emulator_kubeconfig: Path, disposable_prometheus: PrometheusServer, slack_server: SlackServer,
        prefect_api: None, tmp_path: Path) -> dict[str, str]:
    """Only our configuration: no PHASEGATE_* or SLACK_* from the machine running the tests, and
    the session's Prefect API (no Prefect profile: a home of its own)."""
    from prefect.settings import PREFECT_API_URL

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PHASEGATE_", "SLACK_", "KUBECONFIG", "PREFECT_"))}
    return {**base, **slack_server.env(), "PHASEGATE_KUBECONFIG": str(emulator_kubeconfig),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PHASEGATE_PROMETHEUS_URL": disposable_prometheus.url,
            # Prometheus ignores a token it does not ask for; the output must not show it.
            "PHASEGATE_PROMETHEUS_BEARER_TOKEN": PROMETHEUS_TOKEN}


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", DOCTOR, *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name → ``ok`` / ``FAIL``."""
    out = {}
    for line in result.stdout.splitlines():
        mark, _, rest = line.partition("  ")
        if mark.strip() in ("ok", "FAIL"):
            out[rest.strip().split("  ")[0]] = mark.strip()
    return out


def test_doctor_reports_each_check_and_exits_0_when_all_pass(env: dict[str, str]) -> None:
    result = doctor(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result) == {"prefect api": "ok", "cluster": "ok", "kubernetes version": "ok", "rbac bodhi": "ok",
                             "prometheus": "ok", "slack": "ok"}
    assert env["PHASEGATE_KUBECONFIG"] in result.stdout  # says what is configured
    assert f"{env['PREFECT_API_URL']}: online (server 3." in result.stdout
    assert f"{env['PHASEGATE_PROMETHEUS_URL']} (bearer token): online" in result.stdout


def test_doctor_with_a_plan_checks_every_namespace_target_and_the_plans_channel(env: dict[str, str]) -> None:
    result = doctor(env, "--plan", str(SEED_PLAN))
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = {f"metric {name}": "ok" for name in load_plan(SEED_PLAN).metrics}
    assert lines(result) == {
        "prefect api": "ok", "cluster": "ok", "kubernetes version": "ok", "rbac bodhi": "ok", "rbac bodhi-staging": "ok", "target bodhi/bodhi-server": "ok",
        "target bodhi-staging/bodhi-server": "ok", "check staging/smoke": "ok", "check staging/load": "ok",
        "prometheus": "ok", **metrics, "slack": "ok"}
    assert "channel #engineering" in result.stdout
    # From a kubeconfig (outside the cluster) the plan's *.svc checks go through the API server.
    assert "http://bodhi-server.bodhi-staging.svc:8080/health through the API server's service proxy" in result.stdout


def test_doctor_refuses_a_check_the_service_proxy_is_forbidden_for_naming_its_plan_line(
        env: dict[str, str], seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.rbac.deny("get", "services/proxy")
    result = doctor(env, "--plan", str(SEED_PLAN))
    assert result.returncode == 2
    assert {name for name, mark in lines(result).items() if mark == "FAIL"} == {"check staging/smoke",
                                                                                "check staging/load"}
    line = next(x for x in result.stdout.splitlines() if "check staging/smoke" in x)
    smoke_line = next(n for n, text in enumerate(SEED_PLAN.read_text().splitlines(), 1) if "name: smoke" in text)
    assert f"({SEED_PLAN}:{smoke_line}): http://bodhi-server.bodhi-staging.svc:8080/health" in line
    assert "RBAC denies get services/proxy (http:bodhi-server:8080) in namespace bodhi-staging" in line


@pytest.fixture
def scraped(disposable_prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    """The disposable Prometheus scraping synthetic pods as prometheus-operator labels them."""
    with SyntheticApp(canary_world("bodhi"), NEW_IMAGE, None, RealClock(), seed=3) as app:
        disposable_prometheus.set_target_groups(app.target_groups())
        disposable_prometheus.wait_for_data("min(count_over_time(api_response_time_ms_count[5s])) >= 2", timeout=60)
        yield disposable_prometheus


def test_doctor_with_a_plan_prints_the_labels_each_metrics_series_carry(env: dict[str, str], scraped) -> None:
    result = doctor(env, "--plan", str(SEED_PLAN))
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "metric api_latency_p99_ms" in x)
    assert "api_response_time_ms_bucket: container, endpoint, instance, job, le, namespace, pod, service" in line


def test_doctor_refuses_a_plan_whose_selectors_match_no_series_naming_the_matcher(env: dict[str, str],
                                                                                  scraped) -> None:
    result = doctor(env, "--plan", str(TRACK_PLAN))
    assert result.returncode == 2
    line = next(x for x in result.stdout.splitlines() if "metric api_latency_p99_ms" in x)
    assert line.startswith("FAIL")
    assert "deployment exists on no series of api_response_time_ms_bucket" in line and "{{pods}}" in line


def test_wrong_prometheus_url_exits_2_naming_prometheus(env: dict[str, str]) -> None:
    result = doctor({**env, "PHASEGATE_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 2
    assert lines(result)["prometheus"] == "FAIL"
    assert {name for name, mark in lines(result).items() if mark == "FAIL"} == {"prometheus"}
    assert "failed: prometheus" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("api", ["unset", "unreachable"])
def test_doctor_without_a_persistent_prefect_api_exits_2_naming_it(env: dict[str, str], api: str) -> None:
    if api == "unset":
        env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    else:
        env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    result = doctor(env)
    assert result.returncode == 2
    assert {name for name, mark in lines(result).items() if mark == "FAIL"} == {"prefect api"}
    line = next(x for x in result.stdout.splitlines() if "prefect api" in x)
    assert ("PREFECT_API_URL is not set" in line if api == "unset"
            else f"{env['PREFECT_API_URL']}: ConnectError" in line), line
    assert "Traceback" not in result.stderr


def test_rbac_denial_exits_2_naming_the_namespace_and_verb(env: dict[str, str], seeded_cluster: ClusterEmulator) -> None:
    # Without a plan nothing names the target, so doctor asks about the verbs no object narrows.
    seeded_cluster.rbac.deny("create", "deployments")
    result = doctor(env)
    assert result.returncode == 2
    assert re.search(r"^FAIL +rbac bodhi +RBAC denies create deployments", result.stdout, re.MULTILINE)


@pytest.mark.parametrize("valid", [True, False], ids=["accepted", "rejected"])
def test_tokens_never_appear_in_the_output(env: dict[str, str], valid: bool) -> None:
    token = env["SLACK_BOT_TOKEN"] if valid else "xoxb-not-the-token-the-server-accepts-0123"
    result = doctor({**env, "SLACK_BOT_TOKEN": token})
    assert lines(result)["slack"] == ("ok" if valid else "FAIL")
    for secret in (token, PROMETHEUS_TOKEN):
        assert secret not in result.stdout + result.stderr


def _own_prefect_yaml(tmp_path: Path) -> tuple[Path, str, list[str]]:
    """The project's prefect.yaml with a pool and deployment names of this test's own, so what
    other tests registered on the session's API cannot pass or fail it."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = f"doctor-{uuid.uuid4().hex[:8]}"
    for deployment in spec["deployments"]:
        deployment["name"] = f"{deployment['name']}-{pool}"
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool}
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, pool, [d["name"] for d in spec["deployments"]]


def test_doctor_checks_the_work_pool_and_deployments_a_prefect_yaml_declares(
        env: dict[str, str], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from phasegate.entry.register import register

    prefect_yaml, pool, names = _own_prefect_yaml(tmp_path)
    result = doctor(env, "--prefect-yaml", str(prefect_yaml))
    assert result.returncode == 2
    assert {name for name, mark in lines(result).items() if mark == "FAIL"} == {f"work pool {pool}", "deployments"}
    out = result.stdout
    assert f"prefect work-pool create {pool} --type process" in out
    assert f"not registered: {', '.join(sorted(names))}" in out and "prefect deploy --all" in out

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    register(prefect_yaml, names, work_pool=pool)
    result = doctor(env, "--prefect-yaml", str(prefect_yaml))
    assert {name for name, mark in lines(result).items() if mark == "FAIL"} == {f"work pool {pool}"}, result.stdout
    assert "no worker is polling it" in result.stdout and f"prefect worker start --pool {pool}" in result.stdout
    assert f"all {len(names)} registered" in result.stdout

    # A real worker, as the README starts one: its first poll makes the pool ready.
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            result = doctor(env, "--prefect-yaml", str(prefect_yaml))
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert result.returncode == 0, result.stdout + result.stderr
        assert lines(result)[f"work pool {pool}"] == "ok" and "a worker is polling it" in result.stdout
    finally:
        worker.terminate()
        worker.wait(timeout=30)
