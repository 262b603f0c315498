"""Checks from outside the cluster, through the API server's service proxy, on the emulator.

The emulator's proxy route must answer as kube-apiserver v1.20's does (the same path shapes,
ports by number and by name, the same 503s and 403); the real server's answers are checked
in tests/adapters/test_service_proxy_real.py. Behind it a loopback HTTP server stands for
the pods' process, recording what reached it.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import MagicMock

import pytest

from phasegate import runctx
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.checkroute import PlannedCheck, service_url
from phasegate.clock import RealClock
from phasegate.plan import Check, load_plan
from phasegate.rehearsal import world as world_module
from phasegate.rehearsal.app import PodObservation, SyntheticApp
from phasegate.rehearsal.cluster import ClusterEmulator
from tasks.checks import assess_checks, run_check

SEED_PLAN = Path(__file__).parents[2] / "deployments" / "plans" / "token-refresh-locking.yaml"
SMOKE = "http://bodhi-server.bodhi-staging.svc:8080/health"


@dataclass
class Pods:
    """The pods' HTTP process: answers every path 200, records (method, path, forwarded proto)."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        pods = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with pods.lock:
                    pods.seen.append((self.command, self.path, self.headers.get("X-Forwarded-Proto", "")))
                    pods.in_flight += 1
                    pods.peak = max(pods.peak, pods.in_flight)
                threading.Event().wait(0.02)  # long enough for concurrent requests to overlap
                with pods.lock:
                    pods.in_flight -= 1
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                return

        return Handler


@pytest.fixture
def pods(seeded_cluster: ClusterEmulator) -> Iterator[Pods]:
    pods = Pods()
    server = ThreadingHTTPServer(("127.0.0.1", 0), pods.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    # Only the app container's port 8080 is served, per pod, as the synthetic app does.
    seeded_cluster.api.pod_http = lambda ns, pod, port: f"{base}/{ns}/{pod}" if port == 8080 else None
    yield pods
    server.shutdown()
    server.server_close()


def _get(cluster: KubernetesCluster, url: str, method: str = "GET") -> tuple[int, str | None]:
    target = service_url(url)
    assert target is not None
    session = cluster.open_session(1)
    try:
        answer = session.request(method, target, 5.0)
    finally:
        session.close()
    return answer.status, answer.api_error


def _raw(cluster: KubernetesCluster, path: str) -> tuple[int, str]:
    session = cluster.open_session(1)
    try:
        answer = session._api.call_api(*session._api.param_serialize(method="GET", resource_path=path))
        return answer.status, answer.read().decode()
    finally:
        session.close()


def test_a_service_url_reaches_a_ready_pod_of_the_service(kube_cluster: KubernetesCluster, pods: Pods,
                                                           seeded_cluster: ClusterEmulator) -> None:
    assert _get(kube_cluster, "http://bodhi-server.bodhi.svc.cluster.local:8080/healthz?deep=1") == (200, None)
    [(method, path, proto)] = pods.seen
    ready = {p["metadata"]["name"] for p in seeded_cluster.pods("bodhi")}
    namespace, pod, rest = path.strip("/").split("/", 2)
    assert (method, namespace, rest, proto) == ("GET", "bodhi", "healthz?deep=1", "http") and pod in ready
    assert seeded_cluster.requests[-1].path == "/api/v1/namespaces/bodhi/services/http:bodhi-server:8080/proxy/healthz"


@pytest.mark.parametrize("proxy_id", ["http:bodhi-server:8080", "bodhi-server:8080", "bodhi-server:http",
                                      "https:bodhi-server:http"])
def test_ports_by_number_or_name_and_a_scheme_prefix_are_accepted(kube_cluster: KubernetesCluster, pods: Pods,
                                                                  proxy_id: str) -> None:
    assert _raw(kube_cluster, f"/api/v1/namespaces/bodhi/services/{proxy_id}/proxy/x") == (200, "ok\n")
    assert pods.seen[-1][2] == ("https" if proxy_id.startswith("https:") else "http")


@pytest.mark.parametrize(
    ("proxy_id", "code", "message"),
    [
        ("http:bodhi-server:9999", 503, 'no service port 9999 found for service "bodhi-server"'),
        # The Service's only port is named: an unnamed request matches no endpoint port.
        ("bodhi-server", 503, 'no endpoints available for service "bodhi-server"'),
        ("http:nothing-here:8080", 404, 'services "nothing-here" not found'),
        ("ftp:bodhi-server:8080", 400, 'invalid service request "ftp:bodhi-server:8080"'),
    ],
)
def test_refusals_are_the_api_servers(kube_cluster: KubernetesCluster, pods: Pods, proxy_id: str, code: int,
                                      message: str) -> None:
    status, body = _raw(kube_cluster, f"/api/v1/namespaces/bodhi/services/{proxy_id}/proxy/")
    answer = json.loads(body)
    assert (status, answer["kind"], answer["code"], answer["message"]) == (code, "Status", code, message)
    assert pods.seen == []


def test_a_service_whose_pods_are_not_ready_has_no_endpoints(kube_cluster: KubernetesCluster, pods: Pods,
                                                             seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.store.mutate("services", "bodhi", "bodhi-server",
                                lambda s: {**s, "spec": {**s["spec"], "selector": {"app": "nobody"}}})
    status, api_error = _get(kube_cluster, "http://bodhi-server.bodhi.svc:8080/health")
    assert (status, api_error) == (503, 'ServiceUnavailable: no endpoints available for service "bodhi-server"')


def test_a_pod_nothing_listens_on_is_the_api_servers_dial_error(kube_cluster: KubernetesCluster, pods: Pods,
                                                               seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.api.pod_http = lambda ns, pod, port: None
    status, api_error = _get(kube_cluster, "http://bodhi-server.bodhi.svc:8080/health")
    assert status == 500 and api_error is not None and "error trying to reach service: dial tcp 10." in api_error


def test_a_load_check_through_the_proxy_keeps_its_concurrency(kube_cluster: KubernetesCluster, pods: Pods) -> None:
    check = Check(name="load", kind="load", url="http://bodhi-server.bodhi.svc:8080/token/refresh", method="POST",
                  requests=200, concurrency=20)
    ctx = runctx.RunContext(cluster=kube_cluster, metrics=MagicMock(), notifier=MagicMock(), clock=RealClock(),
                            service_proxy=kube_cluster)
    with runctx.use(ctx):
        result = run_check(check)
    assert result.passed and result.failures == 0 and result.route == "api-proxy", result
    assert len(pods.seen) == 200 and {m for m, _, _ in pods.seen} == {"POST"}
    # Every request in flight at the API server was in flight at a pod: the proxy adds no queue of its own.
    assert 10 <= result.peak_in_flight <= 20 and pods.peak >= 10, (result.peak_in_flight, pods.peak)
    assert "through the API server's service proxy (peak" in result.detail


def test_a_check_refused_by_the_api_server_says_so_and_fails(kube_cluster: KubernetesCluster, pods: Pods,
                                                             seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.rbac.deny("get", "services/proxy")
    ctx = runctx.RunContext(cluster=kube_cluster, metrics=MagicMock(), notifier=MagicMock(), clock=RealClock(),
                            service_proxy=kube_cluster)
    with runctx.use(ctx):
        result = run_check(Check(name="smoke", url=SMOKE))
    assert not result.passed and "HTTP 403 from the API server, not the Service: Forbidden" in result.detail


def _assess(cluster: KubernetesCluster, proxy: bool = True) -> tuple[list[PlannedCheck], list[str]]:
    return assess_checks(load_plan(SEED_PLAN), SEED_PLAN, proxy=cluster if proxy else None)


def test_preflight_names_each_proxied_check_and_passes_when_rbac_allows(kube_cluster: KubernetesCluster) -> None:
    planned, problems = _assess(kube_cluster)
    assert problems == []
    assert [(c.phase, c.name, c.route.value) for c in planned] == [("staging", "smoke", "api-proxy"),
                                                                   ("staging", "load", "api-proxy")]
    assert "goes through the API server's service proxy (GET /api/v1/namespaces/bodhi-staging/services/" \
           "http:bodhi-server:8080/proxy/health)" in planned[0].describe()


def test_preflight_refuses_checks_the_proxy_is_forbidden_for_naming_check_and_line(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.rbac.deny("get", "services/proxy")
    _, problems = _assess(kube_cluster)
    lines = SEED_PLAN.read_text().splitlines()
    for problem, name in zip(problems, ("smoke", "load"), strict=True):
        line = next(n for n, text in enumerate(lines, 1) if f"name: {name}, kind: {name}" in text)
        assert problem.startswith(f"phases[staging].checks[{name}] ({SEED_PLAN}:{line}): "), problem
        assert "RBAC denies get services/proxy (http:bodhi-server:8080) in namespace bodhi-staging" in problem


def test_preflight_refuses_a_port_the_service_does_not_have(kube_cluster: KubernetesCluster,
                                                            seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.store.mutate("services", "bodhi-staging", "bodhi-server", lambda s: {
        **s, "spec": {**s["spec"], "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    _, problems = _assess(kube_cluster)
    assert len(problems) == 2 and all(
        "Service bodhi-staging/bodhi-server has no port 8080 (its ports: http 80)" in p for p in problems), problems


def test_inside_the_cluster_a_service_name_that_does_not_resolve_is_refused(kube_cluster: KubernetesCluster) -> None:
    _, problems = _assess(kube_cluster, proxy=False)
    assert len(problems) == 2 and all("bodhi-server.bodhi-staging.svc does not resolve" in p for p in problems)


def test_in_a_rehearsal_world_the_proxy_reaches_the_synthetic_pods(seeded_cluster: ClusterEmulator,
                                                                   kube_cluster: KubernetesCluster) -> None:
    """The world's hook: the proxy forwards to the synthetic app's path for the chosen pod,
    which answers a check as the service would — and a pod the app has never seen start
    (or that was deleted) is the API server's dial error, not a 200."""
    def observe() -> list[PodObservation]:
        return [PodObservation("bodhi-staging", p["metadata"]["name"], p["spec"]["containers"][0]["image"], True,
                               True, None, ip=p["status"]["podIP"]) for p in seeded_cluster.pods("bodhi-staging")]

    with SyntheticApp(observe, "registry.example/new:1") as app:
        seeded_cluster.api.pod_http = functools.partial(world_module._pod_http, app)
        assert _get(kube_cluster, SMOKE) == (200, None)
        assert _raw(kube_cluster, "/api/v1/namespaces/bodhi-staging/services/http:bodhi-server:8080/proxy/health") \
            == (200, "ok\n")
        status, api_error = _get(kube_cluster, "http://bodhi-server.bodhi.svc:8080/health")  # pods it never saw
        assert status == 500 and api_error is not None and "error trying to reach service" in api_error


def test_an_unreachable_api_server_fails_the_check_without_showing_the_token() -> None:
    from tests.fixtures.common import free_port

    token = "kube-token-never-shown-0123456789"
    cluster = KubernetesCluster.from_url(f"http://127.0.0.1:{free_port()}", token=token)
    ctx = runctx.RunContext(cluster=cluster, metrics=MagicMock(), notifier=MagicMock(), clock=RealClock(),
                            service_proxy=cluster)
    with runctx.use(ctx):
        result = run_check(Check(name="smoke", url=SMOKE, timeout="2s"))
    cluster.close()
    assert not result.passed and "API server unreachable" in result.detail
    assert token not in repr(result)
