"""The emulator's HTTP face: kube-apiserver's REST paths as a Starlette app.

Covered: discovery (legacy, non-aggregated: kubectl 1.32 falls back to it when the answer
is plain ``application/json``), get/list/watch/create/update/patch/delete on the resources
in ``k8s_store.RESOURCES``, the ``status`` and ``scale`` subresources, ``Table`` output for
``kubectl get``, SelfSubjectAccessReview, the service proxy, and ``Status`` bodies for
every error.

The service proxy (``/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH``)
follows kube-apiserver v1.20's ``ResourceLocation`` step by step, messages included: RBAC
on ``services/proxy`` first; a port *number* is looked up among the Service's ports (503
"no service port N found"), a name or none is matched against the endpoint port names;
endpoints are what the endpoints controller would write — the Service's port resolved to
each selected pod's container port, Ready pods with an IP as addresses — and none is 503
"no endpoints available for service". A random ready address is chosen and the request
forwarded to whatever serves that pod's port (``pod_http``: the synthetic workload in a
rehearsal); nothing serving it is kube-apiserver's dial error (500, reason Unknown).

Writes are attributed to their field manager (``?fieldManager=``, else the User-Agent's
product token) in ``managedFields``.

Two test hooks sit in front of every resource request: ``Rbac`` (deny chosen verb/resource
pairs with a real 403, and answer access reviews accordingly) and ``Faults`` (a seeded,
hence reproducible, share of requests answered 500, 409, or late). Discovery is exempt from
faults: a real apiserver's discovery is served from memory and rarely fails, and kubectl
caches it. Every request is logged as ``(method, path, query)`` for assertions.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from phasegate.rehearsal import k8s_fields, k8s_hpa, k8s_patch
from phasegate.rehearsal.k8s_store import (
    BY_PATH,
    RESOURCES,
    ApiError,
    Obj,
    ResourceType,
    Store,
    field_selector,
    label_selector,
    resource,
    selector_string,
)

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-phasegate-emulator",
                  "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                  "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
                  "platform": "linux/amd64"}
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
_SERVICE_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/]+)/proxy(/.*)?$")
_PROXY_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# Hop-by-hop and length headers are the proxy's own to set on the way back.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})
# (namespace, pod, container port) -> base URL of what serves it, or None if nothing does.
PodHttp = Callable[[str, str, int], "str | None"]


@dataclass
class Faults:
    """Seeded fault injection: ``set(error_500=0.3, conflict_409=0.2, slow=0.1, slow_seconds=0.5)``."""

    error_500: float = 0.0
    conflict_409: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 0.5
    injected: dict[str, int] = field(default_factory=lambda: {"500": 0, "409": 0, "slow": 0})
    _random: random.Random = field(default_factory=lambda: random.Random(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, *, error_500: float = 0.0, conflict_409: float = 0.0, slow: float = 0.0,
            slow_seconds: float = 0.5, seed: int = 0) -> None:
        with self._lock:
            self.error_500, self.conflict_409 = error_500, conflict_409
            self.slow, self.slow_seconds = slow, slow_seconds
            self._random = random.Random(seed)

    def clear(self) -> None:
        self.set()

    def draw(self, verb: str, *, stored: bool = True) -> tuple[float, int | None]:
        """(delay seconds, error code or None) for one request. 409 only hits writes of stored
        objects: a review such as SelfSubjectAccessReview has no version to conflict with."""
        with self._lock:
            roll_slow, roll_error = self._random.random(), self._random.random()
            delay = self.slow_seconds if roll_slow < self.slow else 0.0
            code = None
            if roll_error < self.error_500:
                code = 500
            elif stored and verb in WRITE_VERBS and roll_error < self.error_500 + self.conflict_409:
                code = 409
            if delay:
                self.injected["slow"] += 1
            if code:
                self.injected[str(code)] += 1
            return delay, code


@dataclass
class Rbac:
    """Which (verb, resource) pairs are denied; everything else is allowed."""

    denied: set[tuple[str, str]] = field(default_factory=set)

    def deny(self, verb: str, resource_name: str) -> None:
        """``deny("patch", "deployments")``; ``resource_name`` may name a subresource (``deployments/scale``)."""
        self.denied.add((verb, resource_name))

    def allows(self, verb: str, resource_name: str) -> bool:
        return (verb, resource_name) not in self.denied and (verb, resource_name.split("/")[0]) not in self.denied


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str


@dataclass(frozen=True)
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str


def _parse(path: str) -> _Target | None:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    elif len(rest) == 2 and rest[0] == "namespaces" and group == "":
        return _Target(resource("namespaces"), None, rest[1], "")
    rt = BY_PATH.get((group, version, rest[0])) if rest else None
    if rt is None or len(rest) > 3:
        return None
    return _Target(rt, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else "")


def _verb(method: str, target: _Target, watch: bool) -> str:
    if method == "GET":
        return "get" if target.name else ("watch" if watch else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _age(stamp: str) -> str:
    seconds = int(time.time() - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds < 600 else f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _columns(rt: ResourceType) -> list[tuple[str, int]]:
    return {
        "Deployment": [("Name", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0), ("Age", 0),
                       ("Containers", 1), ("Images", 1), ("Selector", 1)],
        "ReplicaSet": [("Name", 0), ("Desired", 0), ("Current", 0), ("Ready", 0), ("Age", 0),
                       ("Containers", 1), ("Images", 1), ("Selector", 1)],
        "Pod": [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1)],
        "ConfigMap": [("Name", 0), ("Data", 0), ("Age", 0)],
        "Service": [("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0),
                    ("Age", 0), ("Selector", 1)],
        "Namespace": [("Name", 0), ("Status", 0), ("Age", 0)],
        "Event": [("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0), ("Subobject", 1), ("Source", 1),
                  ("Message", 0), ("First Seen", 1), ("Count", 1), ("Name", 1)],
    }.get(rt.kind, [("Name", 0), ("Age", 0)])


def _cells(obj: Obj) -> list[Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    age = _age(meta["creationTimestamp"])
    containers = (spec.get("template") or {}).get("spec", {}).get("containers") or []
    names = ",".join(c["name"] for c in containers)
    images = ",".join(c.get("image", "") for c in containers)
    kind = obj["kind"]
    if kind == "Deployment":
        return [meta["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
                status.get("updatedReplicas", 0), status.get("availableReplicas", 0), age, names, images,
                selector_string(spec.get("selector"))]
    if kind == "ReplicaSet":
        return [meta["name"], spec.get("replicas", 0), status.get("replicas", 0), status.get("readyReplicas", 0),
                age, names, images, selector_string(spec.get("selector"))]
    if kind == "Pod":
        statuses = status.get("containerStatuses") or []
        waiting = [s["state"]["waiting"]["reason"] for s in statuses if "waiting" in s.get("state", {})]
        return [meta["name"], f"{sum(s.get('ready', False) for s in statuses)}/{len(spec.get('containers') or [])}",
                waiting[0] if waiting else status.get("phase", "Pending"), 0, age, status.get("podIP", "<none>"),
                spec.get("nodeName", "<none>")]
    if kind == "ConfigMap":
        return [meta["name"], len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), age]
    if kind == "Service":
        ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
        selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
        return [meta["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), "<none>",
                ports or "<none>", age, selector or "<none>"]
    if kind == "Namespace":
        return [meta["name"], status.get("phase", "Active"), age]
    if kind == "Event":
        involved = obj.get("involvedObject") or {}
        return [_age(obj.get("lastTimestamp") or meta["creationTimestamp"]), obj.get("type", ""), obj.get("reason", ""),
                f"{involved.get('kind', '').lower()}/{involved.get('name', '')}", involved.get("fieldPath", ""),
                (obj.get("source") or {}).get("component", ""), obj.get("message", ""),
                _age(obj.get("firstTimestamp") or meta["creationTimestamp"]), obj.get("count", 1), meta["name"]]
    return [meta["name"], age]


def _table(rt: ResourceType, objects: list[Obj], rv: str, include: str) -> Obj:
    def row_object(obj: Obj) -> Obj:
        if include == "Object":
            return obj
        if include == "None":
            return {}
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}

    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            {"name": name, "type": "string", "format": "name" if name == "Name" else "", "description": name,
             "priority": priority} for name, priority in _columns(rt)],
        "rows": [{"cells": _cells(o), "object": row_object(o)} for o in objects],
    }


def _pod_log(store: Store, pod: Obj, container: str | None, tail: str | None) -> Response:
    """pods/log as a kubelet answers it: plain text, one container, 400 while it waits to start."""
    name, containers = pod["metadata"]["name"], [c["name"] for c in pod["spec"].get("containers") or []]
    if container is None:
        if len(containers) != 1:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                              f"choose one of: [{' '.join(containers)}]")
        container = containers[0]
    if container not in containers:
        raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
    state = next((s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or []
                  if s["name"] == container), {})
    if "running" not in state:
        reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
        detail = "trying and failing to pull image" if reason == "ImagePullBackOff" else reason
        raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {detail}')
    lines = store.logs.get((pod["metadata"]["namespace"], name, container), [])
    if tail is not None and tail.isdigit():
        lines = lines[len(lines) - int(tail):] if int(tail) else []
    return PlainTextResponse("".join(line + "\n" for line in lines))


def _discovery_resources(group: str, version: str) -> Obj:
    entries: list[Obj] = []
    for rt in RESOURCES:
        if (rt.group, rt.version) != (group, version):
            continue
        entry: Obj = {"name": rt.name, "singularName": rt.singular, "namespaced": rt.namespaced,
                      "kind": rt.kind, "verbs": list(rt.verbs)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entries.append(entry)
        for sub in rt.subresources:
            if sub == "log":
                entries.append({"name": f"{rt.name}/log", "singularName": "", "namespaced": True, "kind": rt.kind,
                                "verbs": ["get"]})
            elif sub == "scale":
                entries.append({"name": f"{rt.name}/scale", "singularName": "", "namespaced": True,
                                "group": "autoscaling", "version": "v1", "kind": "Scale",
                                "verbs": ["get", "patch", "update"]})
            else:
                entries.append({"name": f"{rt.name}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}


def _groups() -> Obj:
    versions: dict[str, list[str]] = {"autoscaling": ["v1"]}  # the Scale subresource's group
    for rt in RESOURCES:
        if rt.group and rt.version not in versions.setdefault(rt.group, []):
            versions[rt.group].append(rt.version)
    groups = []
    for group in sorted(versions):
        listed = sorted(versions[group], reverse=True)  # v2 before v1: the preferred version first
        groups.append({"name": group, "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in listed],
                       "preferredVersion": {"groupVersion": f"{group}/{listed[0]}", "version": listed[0]}})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _scale_view(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": selector_string(obj["spec"].get("selector"))}}


def _apply_patch(content_type: str, original: Any, patch: Any) -> Any:
    kind = content_type.split(";")[0].strip()
    try:
        if kind == "application/strategic-merge-patch+json":
            return k8s_patch.strategic_merge(original, patch)
        if kind == "application/merge-patch+json":
            return k8s_patch.json_merge(original, patch)
        if kind == "application/json-patch+json":
            return k8s_patch.json_patch(original, patch)
    except (k8s_patch.PatchError, KeyError, IndexError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from exc
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}")


class ApiServer:
    """Builds the Starlette app over a ``Store``; holds the test hooks."""

    def __init__(self, store: Store, *, faults: Faults, rbac: Rbac, user: str = "emulator") -> None:
        self.store, self.faults, self.rbac, self.user = store, faults, rbac, user
        self.requests: list[LoggedRequest] = []
        self.closing = threading.Event()
        self.address = "127.0.0.1:0"
        # What serves each pod's ports, for the service proxy; None: no pod serves anything.
        self.pod_http: PodHttp | None = None
        self._proxy_client: Any = None
        self._random = random.Random()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle,
                                           methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])])

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(LoggedRequest(request.method, path, request.url.query))
        try:
            proxied = _SERVICE_PROXY.match(path)
            if proxied:
                return await self._service_proxy(request, proxied[1], proxied[2], proxied[3] or "")
            discovery = self._discovery(path)
            if discovery is not None:
                return JSONResponse(discovery)
            target = _parse(path)
            if target is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            watch = request.query_params.get("watch") in ("1", "true")
            verb = _verb(request.method, target, watch)
            resource_name = target.rt.name + (f"/{target.subresource}" if target.subresource else "")
            if not self.rbac.allows(verb, resource_name):
                raise self._forbidden(verb, target)
            delay, code = self.faults.draw(verb, stored=target.rt.name != "selfsubjectaccessreviews")
            if delay:
                await asyncio.sleep(delay)
            if code == 500:
                raise ApiError(500, "InternalError", "Internal error occurred: injected fault")
            if code == 409:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {target.rt.name} '
                                                f'"{target.name or ""}": injected conflict, please retry')
            if watch:
                return self._watch(request, target)
            body = await request.body()
            payload = json.loads(body) if body else None
            return self._dispatch(request, target, verb, payload)
        except ApiError as exc:
            return JSONResponse(exc.status(), status_code=exc.code)
        except json.JSONDecodeError as exc:
            return JSONResponse(ApiError(400, "BadRequest", f"invalid JSON: {exc}").status(), status_code=400)

    async def _service_proxy(self, request: Request, namespace: str, proxy_id: str, path: str) -> Response:
        verb = _PROXY_VERBS.get(request.method, request.method.lower())
        if not self.rbac.allows(verb, "services/proxy"):
            raise ApiError(403, "Forbidden", f'services "{proxy_id}" is forbidden: User "{self.user}" cannot {verb} '
                                             f'resource "services/proxy" in API group "" in the namespace '
                                             f'"{namespace}"', kind="services", name=proxy_id, group="")
        scheme, name, port = _split_scheme_name_port(proxy_id)
        with self.store.lock:
            service = self.store.find("services", namespace, name)
            pods = self.store.list("pods", namespace)
        if port.isdigit():
            if service is None:
                raise ApiError(404, "NotFound", f'services "{name}" not found', kind="services", name=name)
            declared = next((p for p in (service.get("spec") or {}).get("ports") or []
                             if str(p.get("port")) == port), None)
            if declared is None:
                raise ApiError(503, "ServiceUnavailable", f'no service port {port} found for service "{name}"')
            port = declared.get("name") or ""
        elif service is None:
            raise ApiError(404, "NotFound", f'endpoints "{name}" not found', kind="endpoints", name=name)
        subsets = _endpoints(service, pods)
        if not subsets:
            raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
        addresses = [(pod, ip, number) for port_name, pod, ip, number, ready in subsets
                     if ready and port_name == port]
        if not addresses:
            raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{proxy_id}"')
        pod, ip, number = self._random.choice(addresses)
        base = self.pod_http(namespace, pod, number) if self.pod_http is not None else None
        if base is None:
            raise ApiError(500, "", f"error trying to reach service: dial tcp {ip}:{number}: connect: connection "
                                    "refused")
        return await self._forward(request, f"{base}{path}", scheme or "http")

    async def _forward(self, request: Request, url: str, scheme: str) -> Response:
        import httpx

        if self._proxy_client is None:
            # Created on first use, in the server's own event loop, and kept: a load check
            # through the proxy sends its thousand requests over a few pooled connections.
            self._proxy_client = httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=256))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
                   and k.lower() != "authorization"}
        headers["X-Forwarded-Proto"] = scheme
        if request.url.query:
            url += f"?{request.url.query}"  # as sent: repeated keys and their order kept
        try:
            answer = await self._proxy_client.request(request.method, url, headers=headers,
                                                      content=await request.body())
        except httpx.HTTPError as exc:
            raise ApiError(500, "", f"error trying to reach service: {type(exc).__name__}") from None
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    def _forbidden(self, verb: str, target: _Target) -> ApiError:
        rt = target.rt
        what = f"{rt.name}.{rt.group}" if rt.group else rt.name
        where = f' in the namespace "{target.namespace}"' if target.namespace else " at the cluster scope"
        name = f' "{target.name}"' if target.name else ""
        return ApiError(403, "Forbidden", f'{what}{name} is forbidden: User "{self.user}" cannot {verb} resource '
                                          f'"{rt.name}" in API group "{rt.group}"{where}',
                        kind=rt.name, name=target.name or "", group=rt.group)

    def _discovery(self, path: str) -> Obj | None:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return SERVER_VERSION
        if path in ("/healthz", "/readyz", "/livez"):
            return {"status": "ok"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}]}
        if path == "/apis":
            return _groups()
        if path == "/api/v1":
            return _discovery_resources("", "v1")
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "apis":
            return _discovery_resources(parts[1], parts[2])
        return None

    def _dispatch(self, request: Request, target: _Target, verb: str, payload: Any) -> Response:
        if target.rt.kind == "HorizontalPodAutoscaler" and target.rt.version == "v1":
            return self._dispatch_hpa_v1(request, target, verb, payload)
        return self._dispatch_stored(request, target, verb, payload)

    def _dispatch_hpa_v1(self, request: Request, target: _Target, verb: str, payload: Any) -> Response:
        """autoscaling/v1: converted to the stored v2 on the way in, back on the way out."""
        stored = _Target(resource("autoscaling/horizontalpodautoscalers"), target.namespace, target.name,
                         target.subresource)
        if verb == "patch":
            content_type = request.headers.get("content-type", "")
            manager = k8s_fields.manager_from(request.query_params.get("fieldManager"),
                                              request.headers.get("user-agent"))
            assert target.namespace is not None and target.name is not None
            obj = self.store.mutate(stored.rt.key, target.namespace, target.name,
                                    lambda o: k8s_hpa.to_v2(_apply_patch(content_type, k8s_hpa.to_v1(o), payload)),
                                    subresource=target.subresource, manager=manager)
            return JSONResponse(k8s_hpa.to_v1(obj))
        if verb in ("create", "update") and isinstance(payload, dict):
            payload = k8s_hpa.to_v2(payload)
        response = self._dispatch_stored(request, stored, verb, payload)
        body = json.loads(bytes(response.body))
        if body.get("kind") == "HorizontalPodAutoscaler":
            body = k8s_hpa.to_v1(body)
        elif body.get("kind") == "HorizontalPodAutoscalerList":
            body = {**body, "apiVersion": "autoscaling/v1", "items": [k8s_hpa.to_v1(i) for i in body["items"]]}
        return JSONResponse(body, status_code=response.status_code)

    def _dispatch_stored(self, request: Request, target: _Target, verb: str, payload: Any) -> Response:
        rt, ns, name, sub = target.rt, target.namespace, target.name, target.subresource
        store = self.store
        manager = k8s_fields.manager_from(request.query_params.get("fieldManager"),
                                          request.headers.get("user-agent"))
        if rt.kind == "SelfSubjectAccessReview" and verb == "create":
            return JSONResponse(self._access_review(payload or {}), status_code=201)
        if verb == "list":
            q = request.query_params
            with store.lock:
                items = store.list(rt.key, ns, labels=q.get("labelSelector"), fields=q.get("fieldSelector"))
                rv = str(store.resource_version)
            if "as=Table" in request.headers.get("accept", ""):
                return JSONResponse(_table(rt, items, rv, q.get("includeObject", "Metadata")))
            return JSONResponse({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                                 "metadata": {"resourceVersion": rv}, "items": items})
        assert name is not None or verb == "create"
        if verb == "get":
            obj = store.get(rt.key, ns, name or "")
            if sub == "log":
                return _pod_log(store, obj, request.query_params.get("container"),
                                request.query_params.get("tailLines"))
            if sub == "scale":
                return JSONResponse(_scale_view(obj))
            if "as=Table" in request.headers.get("accept", ""):
                return JSONResponse(_table(rt, [obj], obj["metadata"]["resourceVersion"],
                                           request.query_params.get("includeObject", "Metadata")))
            return JSONResponse(obj)
        if verb == "create":
            if not isinstance(payload, dict):
                raise ApiError(400, "BadRequest", "a JSON object is required")
            body_ns = payload.get("metadata", {}).get("namespace")
            if rt.namespaced and body_ns and body_ns != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            return JSONResponse(store.create(rt.key, ns, payload, manager=manager), status_code=201)
        assert name is not None
        if verb == "update":
            if sub == "scale":
                replicas = (payload or {}).get("spec", {}).get("replicas")
                sent_rv = (payload or {}).get("metadata", {}).get("resourceVersion")
                obj = store.mutate(rt.key, ns, name, lambda o: _set_replicas(o, replicas, sent_rv),
                                   subresource="scale", manager=manager)
                return JSONResponse(_scale_view(obj))
            return JSONResponse(store.update(rt.key, ns, name, payload or {}, subresource=sub, manager=manager))
        if verb == "patch":
            content_type = request.headers.get("content-type", "")
            if sub == "scale":
                def change_scale(o: Obj) -> Obj:
                    patched = _apply_patch(content_type, _scale_view(o), payload)
                    return _set_replicas(o, patched.get("spec", {}).get("replicas"),
                                         patched.get("metadata", {}).get("resourceVersion"))
                return JSONResponse(_scale_view(store.mutate(rt.key, ns, name, change_scale, subresource="scale",
                                                             manager=manager)))
            return JSONResponse(store.mutate(rt.key, ns, name, lambda o: _apply_patch(content_type, o, payload),
                                             subresource=sub, manager=manager))
        if verb == "delete":
            old = store.delete(rt.key, ns, name)
            if rt.kind in ("Pod", "Namespace"):
                return JSONResponse(old)
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "details": {"name": name, "group": rt.group, "kind": rt.name,
                                             "uid": old["metadata"]["uid"]}})
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on {rt.name}")

    def _access_review(self, review: Obj) -> Obj:
        attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
        resource_name = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        allowed = self.rbac.allows(attrs.get("verb", ""), resource_name)
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": review.get("spec") or {},
                "status": {"allowed": allowed, **({} if allowed else {"denied": True,
                                                                      "reason": "denied by emulator RBAC"})}}

    def _watch(self, request: Request, target: _Target) -> Response:
        q = request.query_params
        rt, ns = target.rt, target.namespace
        match_labels, match_fields = label_selector(q.get("labelSelector")), field_selector(q.get("fieldSelector"))
        if target.name:  # watching a single object by path
            match_fields = field_selector(f"metadata.name={target.name}")
        timeout = float(q.get("timeoutSeconds") or 1800)
        initial = q.get("sendInitialEvents") == "true"
        since = q.get("resourceVersion") or "0"

        def matches(obj: Obj) -> bool:
            return ((ns is None or obj["metadata"].get("namespace") == ns)
                    and match_labels(obj["metadata"].get("labels") or {}) and match_fields(obj))

        async def stream() -> AsyncIterator[bytes]:
            with self.store.lock:
                last = self.store.resource_version
                current = [o for o in self.store.list(rt.key, ns) if matches(o)]
            if initial or since == "0":
                for obj in current:
                    yield _event("ADDED", obj)
            else:
                last = int(since)
            if initial:
                yield _event("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {
                    "resourceVersion": str(last), "annotations": {"k8s.io/initial-events-end": "true"}}})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self.closing.is_set():
                events, fresh = self.store.events_after(last)
                if not fresh:
                    yield _event("ERROR", ApiError(410, "Expired", f"too old resource version: {last}").status())
                    return
                for event in events:
                    last = event.rv
                    if event.key == rt.key and matches(event.object):
                        yield _event(event.type, event.object)
                await asyncio.sleep(0.02)

        return StreamingResponse(stream(), media_type="application/json")


def _split_scheme_name_port(proxy_id: str) -> tuple[str, str, str]:
    """``name``, ``name:port`` or ``scheme:name:port`` (apimachinery's SplitSchemeNamePort)."""
    parts = proxy_id.split(":")
    scheme, name, port = {1: ("", parts[0], ""), 2: ("", parts[0], parts[-1]),
                          3: tuple(parts)}.get(len(parts), ("", "", ""))
    if not name or scheme not in ("", "http", "https"):
        raise ApiError(400, "BadRequest", f'invalid service request "{proxy_id}"')
    return scheme, name, port


def _endpoints(service: Obj, pods: list[Obj]) -> list[tuple[str, str, str, int, bool]]:
    """What the endpoints controller writes for ``service``, flattened: (port name, pod, pod IP,
    container port, ready) for each selected pod with an IP and each Service port it has."""
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        return []  # a Service without a selector has the endpoints someone writes by hand: none here
    out = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if any(labels.get(k) != v for k, v in selector.items()) or not status.get("podIP") \
                or pod["metadata"].get("deletionTimestamp"):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        for sp in spec.get("ports") or []:
            target = sp.get("targetPort", sp.get("port"))
            if isinstance(target, str) and not target.isdigit():
                number = next((cp.get("containerPort") for c in pod["spec"].get("containers") or []
                               for cp in c.get("ports") or [] if cp.get("name") == target), None)
                if number is None:
                    continue
            else:
                number = int(target)
            out.append((sp.get("name") or "", pod["metadata"]["name"], status["podIP"], int(number), ready))
    return out


def _event(kind: str, obj: Obj) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def _set_replicas(obj: Obj, replicas: Any, sent_rv: str | None) -> Obj:
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(422, "Invalid", "spec.replicas: Invalid value: must be a non-negative integer")
    if sent_rv:
        obj["metadata"]["resourceVersion"] = sent_rv
    obj["spec"]["replicas"] = replicas
    return obj

