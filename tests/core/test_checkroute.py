"""Which check URLs name a cluster Service, and the proxy path each one becomes."""

from __future__ import annotations

import pytest

from phasegate.checkroute import PlannedCheck, Route, check_problems, proxy_verb, route, service_url
from phasegate.decide import preflight_problems


@pytest.mark.parametrize(
    ("url", "proxy_path"),
    [
        ("http://bodhi-server.bodhi.svc.cluster.local:8080/healthz",
         "/api/v1/namespaces/bodhi/services/http:bodhi-server:8080/proxy/healthz"),
        ("http://bodhi-server.bodhi-staging.svc:8080/health",
         "/api/v1/namespaces/bodhi-staging/services/http:bodhi-server:8080/proxy/health"),
        ("https://bodhi-server.bodhi.svc/token/refresh",
         "/api/v1/namespaces/bodhi/services/https:bodhi-server:443/proxy/token/refresh"),
        ("http://bodhi-server.bodhi.svc", "/api/v1/namespaces/bodhi/services/http:bodhi-server:80/proxy/"),
        ("http://bodhi-server.bodhi:8080/health",  # <svc>.<ns>, ns one of the plan's
         "/api/v1/namespaces/bodhi/services/http:bodhi-server:8080/proxy/health"),
        ("http://Bodhi-Server.BODHI.svc.cluster.local.:8080/a%20b",
         "/api/v1/namespaces/bodhi/services/http:bodhi-server:8080/proxy/a%20b"),
    ],
)
def test_a_service_url_becomes_the_api_servers_proxy_path(url: str, proxy_path: str) -> None:
    target = service_url(url, namespaces=["bodhi", "bodhi-staging"])
    assert target is not None and target.proxy_path == proxy_path


def test_the_query_is_kept_apart_from_the_proxy_path() -> None:
    target = service_url("http://api.bodhi.svc:8080/search?q=a&n=2")
    assert target is not None and target.query == "q=a&n=2" and target.path == "/search"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/health",  # two labels, but not a namespace of the plan
        "http://bodhi-server:8080/health",  # a bare name resolves relative to whoever asks
        "http://127.0.0.1:8080/health",
        "http://bodhi-server.bodhi.svc.example.org/health",  # another cluster domain than configured
        "http://staging.bodhi.example.com/health",
    ],
)
def test_other_hosts_are_not_service_names(url: str) -> None:
    assert service_url(url, namespaces=["bodhi"]) is None


def test_a_configured_cluster_domain_is_recognised() -> None:
    target = service_url("http://api.team.svc.corp.internal/x", cluster_domain="corp.internal")
    assert target is not None and (target.service, target.namespace) == ("api", "team")


def test_outside_the_cluster_service_urls_go_through_the_proxy_and_others_directly() -> None:
    assert route("http://a.b.svc/x", proxy_available=True)[0] is Route.API_PROXY
    assert route("https://status.example.com/x", proxy_available=True)[0] is Route.DIRECT
    # In the cluster (no proxy in the run context) the same Service URL is requested as written.
    assert route("http://a.b.svc/x", proxy_available=False)[0] is Route.DIRECT


def test_the_rbac_verb_follows_the_method_as_the_api_server_maps_it() -> None:
    assert [proxy_verb(m) for m in ("GET", "HEAD", "POST")] == ["get", "get", "create"]


def _planned(url: str, how: Route, method: str = "GET") -> PlannedCheck:
    return PlannedCheck("staging", "smoke", method, url, "plan.yaml:110", how,
                        service_url(url, namespaces=["bodhi-staging"]))


def test_a_proxy_rbac_denies_is_refused_naming_the_check_its_line_and_the_permission() -> None:
    c = _planned("http://bodhi-server.bodhi-staging.svc:8080/health", Route.API_PROXY)
    [problem] = check_problems([c], proxy_denied=[c], proxy_available=True)
    assert problem.startswith("phases[staging].checks[smoke] (plan.yaml:110): ")
    assert "RBAC denies get services/proxy (http:bodhi-server:8080) in namespace bodhi-staging" in problem


def test_a_missing_service_port_is_refused_for_each_check_that_uses_it() -> None:
    c = _planned("http://bodhi-server.bodhi-staging.svc:8080/health", Route.API_PROXY)
    problems = check_problems([c], service_problems={"bodhi-staging/bodhi-server:8080": "has no port 8080"},
                              proxy_available=True)
    assert problems == ["phases[staging].checks[smoke] (plan.yaml:110): "
                        "http://bodhi-server.bodhi-staging.svc:8080/health: has no port 8080"]


def test_an_unresolvable_host_says_whether_the_proxy_could_have_helped() -> None:
    bare = _planned("http://bodhi-server:8080/health", Route.DIRECT)
    svc = _planned("http://bodhi-server.bodhi-staging.svc:8080/health", Route.DIRECT)
    [outside] = check_problems([bare], unresolved=[bare], proxy_available=True)
    [inside] = check_problems([svc], unresolved=[svc], proxy_available=False)
    assert "does not resolve from here, and it is not a Service name" in outside
    assert "PHASEGATE_CHECK_ROUTE" in inside and "is the Service there?" in inside


def test_check_problems_stop_the_rollout_at_preflight() -> None:
    problems = preflight_problems(targets={}, denied={}, checklist_required=False, checklist_confirmed=True,
                                  metric_problems=[], slack_problem=None, image="r/x:1",
                                  check_problems=["phases[staging].checks[smoke] (p:1): denied"])
    assert problems == ["phases[staging].checks[smoke] (p:1): denied"]
