"""The service proxy path against the emulator and the real kube-apiserver v1.20.2.

What the real server can show here: that it accepts the request shapes checks send
(``scheme:name:port``, ports by number and by name), and that its refusals — a port the
Service lacks, a Service no ready pod backs, a missing Service, RBAC — are the ones the
emulator gives and the check reports. It cannot show a proxied answer: the node agent's
pods have addresses in 10.244.0.0/16 with no process behind them, and kube-apiserver refuses
loopback endpoints by design, so a request that would be dialled is never sent here (a
proxied answer is tested on the emulator, tests/rehearsal/test_service_proxy.py).
"""

from __future__ import annotations

import time
from unittest.mock import MagicMock

import pytest

from phasegate import runctx
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.checkroute import service_url
from phasegate.clock import RealClock
from phasegate.plan import Check
from phasegate.rehearsal.cluster import SEED_DEPLOYMENT
from tasks.checks import run_check
from tests.adapters.test_rbac import ROLLOUT_ACCOUNT
from tests.adapters.test_rbac_real import RolloutAccount, reading_account, rollout_account  # noqa: F401  (fixtures)
from tests.fixtures.backends import Backend, EmulatorBackend, RealBackend, RealControlPlane


def _service(backend: Backend, name: str, selector: dict[str, str]) -> None:
    body = {"metadata": {"name": name}, "spec": {"selector": selector,
                                                 "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}
    if isinstance(backend, RealBackend):
        backend.changed = True
        backend.http.post(f"/api/v1/namespaces/{backend.namespace}/services", body)
        # Until the endpoints controller has written the (empty) Endpoints, the proxy says
        # 'endpoints "nobody" not found' instead.
        backend.wait_until(lambda: backend.http.find(f"/api/v1/namespaces/{backend.namespace}/endpoints/{name}")
                           is not None, f"endpoints {name} written")
    else:
        assert isinstance(backend, EmulatorBackend)
        backend.emulator.store.create("services", backend.namespace, body)


def _answer(adapter: KubernetesCluster, url: str) -> tuple[int, str | None]:
    target = service_url(url)
    assert target is not None
    session = adapter.open_session(1)
    try:
        answer = session.request("GET", target, 10.0)
    finally:
        session.close()
    return answer.status, answer.api_error


@pytest.mark.parametrize(
    ("host", "status", "api_error"),
    [
        ("{svc}.{ns}.svc:9999", 503, 'ServiceUnavailable: no service port 9999 found for service "{svc}"'),
        ("nothing-here.{ns}.svc:8080", 404, 'NotFound: services "nothing-here" not found'),
    ],
)
def test_the_api_server_refuses_what_no_service_port_can_answer(backend: Backend, adapter: KubernetesCluster,
                                                                 host: str, status: int, api_error: str) -> None:
    values = {"svc": SEED_DEPLOYMENT, "ns": backend.namespace}
    assert _answer(adapter, f"http://{host.format(**values)}/health") == (status, api_error.format(**values))


def test_a_service_no_ready_pod_backs_has_no_endpoints(backend: Backend, adapter: KubernetesCluster) -> None:
    _service(backend, "nobody", {"app": "nobody"})
    url = f"http://nobody.{backend.namespace}.svc.cluster.local:8080/healthz"
    assert _answer(adapter, url) == (503, 'ServiceUnavailable: no endpoints available for service "nobody"')


def test_a_check_the_api_server_refuses_fails_with_its_reason(backend: Backend, adapter: KubernetesCluster) -> None:
    _service(backend, "nobody", {"app": "nobody"})
    ctx = runctx.RunContext(cluster=adapter, metrics=MagicMock(), notifier=MagicMock(), clock=RealClock(),
                            service_proxy=adapter)
    with runctx.use(ctx):
        result = run_check(Check(name="smoke", url=f"http://nobody.{backend.namespace}.svc:8080/health",
                                 requests=3, concurrency=3))
    assert not result.passed and result.failures == 3 and result.route == "api-proxy"
    assert "HTTP 503 from the API server, not the Service: ServiceUnavailable: no endpoints available" in result.detail


def test_an_account_without_services_proxy_is_told_by_the_real_authorizer(
        reading_account: RolloutAccount) -> None:  # noqa: F811
    """deployments/k8s/rbac.yaml grants no services/proxy: the in-cluster worker needs none."""
    cluster, ns = reading_account.cluster, reading_account.staging
    assert cluster.proxy_allowed(ns, f"http:{SEED_DEPLOYMENT}:8080", "get") is False
    status, api_error = _answer(cluster, f"http://{SEED_DEPLOYMENT}.{ns}.svc:8080/health")
    assert status == 403 and api_error is not None
    assert f'cannot get resource "services/proxy" in API group "" in the namespace "{ns}"' in api_error


def test_a_role_granting_services_proxy_names_the_proxy_id_not_the_service(
        rollout_account: RolloutAccount, real_control_plane: RealControlPlane) -> None:  # noqa: F811
    """What README tells a laptop user to grant: RBAC sees ``http:bodhi-server:8080`` as the
    resource name, so a Role naming only ``bodhi-server`` grants nothing."""
    admin, ns = real_control_plane.observer, rollout_account.staging
    assert admin is not None
    account, account_ns = ROLLOUT_ACCOUNT
    for role, names in (("proxy-by-service-name", [SEED_DEPLOYMENT]), ("proxy-by-id", [f"http:{SEED_DEPLOYMENT}:9999"])):
        admin.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
            "metadata": {"name": role}, "rules": [{"apiGroups": [""], "resources": ["services/proxy"],
                                                   "verbs": ["get", "create"], "resourceNames": names}]})
        admin.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                    "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_ns}]})
    cluster = rollout_account.cluster
    deadline = time.monotonic() + 10  # the authorizer's informers see the new bindings within moments
    while not cluster.proxy_allowed(ns, f"http:{SEED_DEPLOYMENT}:9999", "get") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.proxy_allowed(ns, f"http:{SEED_DEPLOYMENT}:9999", "get")
    assert not cluster.proxy_allowed(ns, f"http:{SEED_DEPLOYMENT}:8080", "get")
    # Authorized, the request reaches the Service lookup (a port it lacks: nothing is dialled).
    assert _answer(cluster, f"http://{SEED_DEPLOYMENT}.{ns}.svc:9999/health") == (
        503, f'ServiceUnavailable: no service port 9999 found for service "{SEED_DEPLOYMENT}"')
