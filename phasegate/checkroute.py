"""Where a smoke or load check's requests go: to the URL as written, or through the API
server's service proxy.

Design decisions:

* A plan's checks name cluster Services by their DNS names
  (``http://bodhi-server.bodhi-staging.svc:8080/health``), which resolve only inside the
  cluster. Run from a laptop or a CI runner, phasegate sends such a request to the
  Kubernetes API server instead, as ``kubectl proxy`` would:
  ``/api/v1/namespaces/bodhi-staging/services/http:bodhi-server:8080/proxy/health``, with
  the credentials the rollout already uses. We chose this over running each check as a
  Job in the target namespace: the proxy needs no image, no scheduling, no clean-up and
  no extra RBAC beyond ``get``/``create`` on ``services/proxy``, and its answer is the
  Service's own. The price is that the API server is in the path of every request (its
  latency, its inflight limits and API Priority and Fairness), which matters for a load
  check: its result says it went through the proxy, and how many requests were really in
  flight.
* Which host is a Service: ``<svc>.<ns>.svc``, ``<svc>.<ns>.svc.<cluster domain>``
  (``cluster.local`` unless configured), and ``<svc>.<ns>`` only when ``<ns>`` is a
  namespace the plan deploys to — anywhere else a two-label name is a public host
  (``example.com``). A bare ``<svc>`` resolves relative to the namespace of whoever asks, so
  it is never guessed at.
* The port is the Service's port, as a client in the cluster connecting to the Service
  uses it, not the pod's: the API server matches a number against ``spec.ports[].port``
  and a name against ``spec.ports[].name``. No port in the URL is the scheme's (80, 443),
  as for any URL.
* Which route a run takes is the entry layer's decision (``RunContext.service_proxy``):
  inside the cluster (a worker's pod) requests go to the URL; outside it, Service URLs go
  through the proxy and every other URL to the URL. Pure: no HTTP, no Kubernetes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Route(enum.StrEnum):
    DIRECT = "direct"  # the URL as written
    API_PROXY = "api-proxy"  # the API server's service proxy


@dataclass(frozen=True)
class ServiceURL:
    """A check URL that names a cluster Service, split as the service proxy needs it."""

    scheme: str
    service: str
    namespace: str
    port: str
    path: str
    query: str

    @property
    def proxy_name(self) -> str:
        """The proxy's ``[scheme:]name[:port]`` id (what RBAC sees as the resource name)."""
        return f"{self.scheme}:{self.service}:{self.port}"

    @property
    def proxy_path(self) -> str:
        """The API path the request goes to (without the query)."""
        return (f"/api/v1/namespaces/{self.namespace}/services/{self.proxy_name}/proxy"
                + quote(self.path or "/", safe="/%:@!$&'()*+,;=-._~"))

    @property
    def host(self) -> str:
        return f"{self.service}.{self.namespace}.svc"


def service_url(url: str, namespaces: Iterable[str] = (),
                cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> ServiceURL | None:
    """The Service ``url`` names, or None if its host is not a cluster Service name."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    labels = host.split(".")
    domain = cluster_domain.strip(".").lower()
    if len(labels) >= 3 and labels[2] == "svc" and ".".join(labels[3:]) in ("", domain):
        service, namespace = labels[0], labels[1]
    elif len(labels) == 2 and labels[1] in set(namespaces):
        service, namespace = labels
    else:
        return None
    if not (_LABEL.match(service) and _LABEL.match(namespace)):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return ServiceURL(scheme, service, namespace, str(port or (443 if scheme == "https" else 80)),
                      parts.path, parts.query)


def route(url: str, *, proxy_available: bool, namespaces: Iterable[str] = (),
          cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> tuple[Route, ServiceURL | None]:
    """The route for ``url``: through the proxy when one is available and the URL names a Service."""
    target = service_url(url, namespaces, cluster_domain)
    if proxy_available and target is not None:
        return Route.API_PROXY, target
    return Route.DIRECT, target


def proxy_verb(method: str) -> str:
    """The RBAC verb the API server checks for a proxied request of ``method``."""
    return {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method.upper()]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PlannedCheck:
    """One check of one phase, where it sits in the plan file, and the route it will take."""

    phase: str
    name: str
    method: str
    url: str
    where: str  # FILE:LINE of the check's url
    route: Route
    target: ServiceURL | None

    @property
    def label(self) -> str:
        return f"phases[{self.phase}].checks[{self.name}] ({self.where})"

    def describe(self) -> str:
        if self.route is Route.API_PROXY and self.target is not None:
            return (f"check {self.phase}/{self.name}: {self.method} {self.url} goes through the API server's "
                    f"service proxy ({self.method} {self.target.proxy_path}): {self.target.host} resolves only "
                    "inside the cluster")
        return f"check {self.phase}/{self.name}: {self.method} {self.url} is requested directly"


def check_problems(planned: Iterable[PlannedCheck], *, proxy_denied: Iterable[PlannedCheck] = (),
                   service_problems: dict[str, str] | None = None,
                   unresolved: Iterable[PlannedCheck] = (), proxy_available: bool) -> list[str]:
    """Why checks cannot reach their Service, one line each, naming the check and its plan line.

    ``proxy_denied``: proxied checks RBAC refuses; ``service_problems``: Service port
    (``ns/name:port``) → why the proxy cannot reach it (missing, no such port);
    ``unresolved``: direct checks whose host does not resolve from here."""
    problems: list[str] = []
    service_problems = service_problems or {}
    for c in proxy_denied:
        assert c.target is not None
        problems.append(
            f"{c.label}: {c.url} names a cluster Service, which is reachable from here only through the API "
            f"server's service proxy, and RBAC denies {proxy_verb(c.method)} services/proxy "
            f"({c.target.proxy_name}) in namespace {c.target.namespace}: grant it, or run phasegate inside "
            "the cluster")
    for c in planned:
        if c.route is Route.API_PROXY and c.target is not None:
            problem = service_problems.get(f"{c.target.namespace}/{c.target.service}:{c.target.port}")
            if problem:
                problems.append(f"{c.label}: {c.url}: {problem}")
    for c in unresolved:
        host = urlsplit(c.url).hostname or ""
        if c.target is not None and not proxy_available:
            problems.append(f"{c.label}: {c.url}: {host} does not resolve, and this run sends checks directly "
                            "(in the cluster, or PHASEGATE_CHECK_ROUTE=direct): is the Service there? From "
                            "outside the cluster, leave PHASEGATE_CHECK_ROUTE at auto to go through the API "
                            "server's service proxy")
        else:
            problems.append(f"{c.label}: {c.url}: host {host} does not resolve from here, and it is not a "
                            "Service name the API server can proxy (<service>.<namespace>.svc)")
    return problems
