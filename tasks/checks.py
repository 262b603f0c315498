"""Smoke and load checks run after a deploy, before the soak, and where they can reach.

A load check fires ``requests`` HTTP calls with ``concurrency`` in flight (the seed asks for
1000+ concurrent requests) and fails when more than ``max_error_rate`` of them fail or
answer an unexpected status. Bounded in count and time by construction.

A check whose URL names a cluster Service goes through the API server's service proxy when
the run is outside the cluster (``phasegate.checkroute``: the run context carries the
proxy). The concurrency is then the number of requests in flight to the API server, each
proxied to one pod: the API server's latency and its inflight limits are part of what a
load check through the proxy measures, and its result says so, with the peak number of
requests really in flight (a check is honest about the load it made, not only the load it
was asked for). An answer the API server gives itself (no endpoints, forbidden, a dial
error, 429) is told apart from the Service's own.

``plan_checks`` is preflight's part: before anything is deployed it states which checks go
through the proxy and finds those that could reach their Service by neither route.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger, task

from phasegate import checkroute, runctx
from phasegate.checkroute import PlannedCheck, Route, ServiceURL
from phasegate.errors import ClusterUnavailable
from phasegate.plan import Check, RolloutPlan
from phasegate.ports import ServiceProxy
from phasegate.yamlsource import SourceError, load_file
from tasks.common import NO_CACHE, RETRYING


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    requests: int
    failures: int
    error_rate: float
    passed: bool
    detail: str
    route: str = Route.DIRECT.value
    peak_in_flight: int = 0


class _InFlight:
    """Counts requests in flight and the most there ever were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def _route(check: Check, namespaces: Iterable[str]) -> tuple[Route, ServiceURL | None]:
    ctx = runctx.get()
    return checkroute.route(check.url, proxy_available=ctx.service_proxy is not None, namespaces=namespaces,
                            cluster_domain=ctx.cluster_domain)


def run_check(check: Check, namespaces: Iterable[str] = ()) -> CheckResult:
    ctx = runctx.get()
    how, target = _route(check, namespaces)
    timeout = check.timeout.total_seconds()
    first_error = ""
    in_flight = _InFlight()

    def failed(reason: str) -> bool:
        nonlocal first_error
        first_error = first_error or reason
        return False

    def answered(status: int, api_error: str | None = None) -> bool:
        if api_error is not None:
            return failed(f"HTTP {status} from the API server, not the Service: {api_error}")
        if status != check.expect_status:
            return failed(f"HTTP {status}")
        return True

    one: Callable[[], bool]
    if how is Route.API_PROXY and target is not None and ctx.service_proxy is not None:
        session = ctx.service_proxy.open_session(check.concurrency)

        def one() -> bool:
            try:
                with in_flight:
                    answer = session.request(check.method, target, timeout)
            except ClusterUnavailable as exc:
                return failed(str(exc))
            return answered(answer.status, answer.api_error)

        close = session.close
    else:
        url = ctx.url_for_check(check.url)
        limits = httpx.Limits(max_connections=check.concurrency, max_keepalive_connections=check.concurrency)
        client = httpx.Client(timeout=timeout, limits=limits)

        def one() -> bool:
            try:
                with in_flight:
                    response = client.request(check.method, url)
            except httpx.HTTPError as exc:
                return failed(type(exc).__name__)
            return answered(response.status_code)

        close = client.close
    try:
        with ThreadPoolExecutor(check.concurrency) as pool:
            results = list(pool.map(lambda _: one(), range(check.requests)))
    finally:
        close()
    failures = results.count(False)
    rate = failures / check.requests
    passed = rate <= check.max_error_rate
    detail = f"{failures}/{check.requests} failed"
    if how is Route.API_PROXY:
        detail += f", through the API server's service proxy (peak {in_flight.peak} in flight)"
    elif check.concurrency > 1:
        detail += f" (peak {in_flight.peak} in flight)"
    detail += f" (first: {first_error})" if first_error else ""
    return CheckResult(check.name, check.kind, check.requests, failures, rate, passed, detail, how.value,
                       in_flight.peak)


@task(name="run_phase_checks", **NO_CACHE)
def run_phase_checks(checks: list[Check], namespaces: Sequence[str] = ()) -> list[CheckResult]:
    """``namespaces``: the plan's, where a ``<service>.<namespace>`` host names a Service."""
    results = [run_check(c, namespaces) for c in checks]
    for r in results:
        get_run_logger().info("check %s (%s): %s", r.name, r.kind, r.detail)
    return results


def planned_checks(plan: RolloutPlan, plan_path: str | Path | None = None, *, proxy_available: bool,
                   cluster_domain: str = checkroute.DEFAULT_CLUSTER_DOMAIN) -> list[PlannedCheck]:
    """Every check of the plan with its route and its line in the plan file."""
    namespaces = sorted({plan.namespace(p) for p in plan.phases})
    source = None
    if plan_path is not None:
        try:
            source = load_file(plan_path)
        except (OSError, SourceError):
            source = None  # the plan was loaded from it a moment ago; without lines, name the path only
    out = []
    for i, phase in enumerate(plan.phases):
        for j, check in enumerate(phase.checks):
            line = source.line_of(("phases", i, "checks", j, "url")) if source is not None else None
            where = f"{plan_path}:{line}" if line else str(plan_path or plan.name)
            how, target = checkroute.route(check.url, proxy_available=proxy_available, namespaces=namespaces,
                                           cluster_domain=cluster_domain)
            out.append(PlannedCheck(phase.name, check.name, check.method, check.url, where, how, target))
    return out


def _resolves(host: str) -> bool:
    if not host or checkroute.is_ip_literal(host):
        return True
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def assess_checks(plan: RolloutPlan, plan_path: str | Path | None = None, *, proxy: ServiceProxy | None,
                  cluster_domain: str = checkroute.DEFAULT_CLUSTER_DOMAIN,
                  url_for_check: Callable[[str], str] = str) -> tuple[list[PlannedCheck], list[str]]:
    """Every check with its route (through ``proxy`` if one is given), and why any could reach
    its Service by neither route (RBAC denies the proxy, the Service or its port is missing,
    or a direct host does not resolve here). Also what ``phasegate doctor --plan`` shows."""
    planned = planned_checks(plan, plan_path, proxy_available=proxy is not None, cluster_domain=cluster_domain)
    denied, unresolved = [], []
    service_problems: dict[str, str] = {}
    allowed: dict[tuple[str, str, str], bool] = {}
    for c in planned:
        if c.route is Route.API_PROXY and c.target is not None and proxy is not None:
            t = c.target
            key = (t.namespace, t.proxy_name, checkroute.proxy_verb(c.method))
            if key not in allowed:
                allowed[key] = proxy.proxy_allowed(*key)
            if not allowed[key]:
                denied.append(c)
            service = f"{t.namespace}/{t.service}:{t.port}"
            if service not in service_problems:
                problem = proxy.service_port_problem(t.namespace, t.service, t.port)
                if problem:
                    service_problems[service] = problem
        elif not _resolves(urlsplit(url_for_check(c.url)).hostname or ""):
            unresolved.append(c)
    return planned, checkroute.check_problems(planned, proxy_denied=denied, service_problems=service_problems,
                                              unresolved=unresolved, proxy_available=proxy is not None)


@task(name="plan_checks", **RETRYING)
def plan_checks(plan: RolloutPlan, plan_path: str | None = None) -> list[str]:
    """Preflight: log which checks go through the API server's service proxy, before anything
    is deployed, and return the problems of ``assess_checks``."""
    ctx = runctx.get()
    planned, problems = assess_checks(plan, plan_path, proxy=ctx.service_proxy, cluster_domain=ctx.cluster_domain,
                                      url_for_check=ctx.url_for_check)
    for c in planned:
        if c.route is Route.API_PROXY:
            get_run_logger().info("%s", c.describe())
    return problems
