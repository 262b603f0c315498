"""The emulator's object store: what etcd plus the apiserver's generic registry do.

Objects are plain JSON dicts, exactly what goes over the wire, keyed by resource type,
namespace and name. One global counter hands out ``resourceVersion`` (as etcd's revision
does), so a stale version is detected on any write, and the same counter orders the watch
event log. ``generation`` counts spec changes only, and writes to the main resource never
touch ``status`` (nor the reverse), as for every built-in type with a status subresource.
Every write names its field manager, and ``managedFields`` record who owns each field
(``k8s_fields``), which is how a drift check tells who changed an image or a replica count.

One ``RLock`` guards everything: the HTTP handlers, the controller thread and in-process
readers (the rehearsal's synthetic app) all go through it. Returned objects are deep copies,
so callers may mutate what they get.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phasegate.rehearsal import k8s_fields

# k8s.io/apimachinery/pkg/util/rand's alphabet and the apiserver's generateName base limit.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_GENERATE_BASE = 58

Obj = dict[str, Any]
# In-process writers that name no manager (seeding, tests): what a request without a
# fieldManager or User-Agent would be recorded as.
UNNAMED_MANAGER = "unknown"


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, as discovery describes it."""

    group: str
    version: str
    name: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def tracks_generation(self) -> bool:
        return "status" in self.subresources


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
                  subresources=("status",)),
    ResourceType("", "v1", "pods", "Pod", short_names=("po",), subresources=("log",), categories=("all",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "services", "Service", short_names=("svc",), categories=("all",)),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("apps", "v1", "deployments", "Deployment", short_names=("deploy",),
                 subresources=("status", "scale"), categories=("all",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",),
                 subresources=("status", "scale"), categories=("all",)),
    # v1 first: both versions share one storage key, and the later (v2) is the storage version.
    ResourceType("autoscaling", "v1", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short_names=("hpa",),
                 subresources=("status",), categories=("all",)),
    ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short_names=("hpa",),
                 subresources=("status",), categories=("all",)),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",),
                 subresources=("status",)),
    ResourceType("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview",
                 namespaced=False, verbs=("create",)),
)
BY_PATH: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.name): r for r in RESOURCES}
BY_KEY: dict[str, ResourceType] = {r.key: r for r in RESOURCES}


def resource(key: str) -> ResourceType:
    """``"apps/deployments"``, ``"/configmaps"`` (core group) or a bare core plural."""
    return BY_KEY[key if "/" in key else "/" + key]


class ApiError(Exception):
    """An error the apiserver answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, *, kind: str = "", name: str = "",
                 group: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = {"name": name, "group": group, "kind": kind} if (name or kind) else None

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiError:
    what = f"{rt.name}.{rt.group}" if rt.group else rt.name
    return ApiError(404, "NotFound", f'{what} "{name}" not found', kind=rt.name, name=name, group=rt.group)


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    what = f"{rt.name}.{rt.group}" if rt.group else rt.name
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": {why}',
                    kind=rt.name, name=name, group=rt.group)


def invalid(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {why}', kind=rt.kind, name=name,
                    group=rt.group)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- selectors ----------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$"
)


def _split_requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _satisfied(labels: dict[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    if op == "exists":
        return key in labels
    if op == "!exists":
        return key not in labels
    if op in ("=", "==", "in"):
        return labels.get(key) in values
    return labels.get(key) not in values  # "!=" and "notin" also match a missing key


def label_selector(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """Parse the string form of a label selector (``a=b,c!=d,e in (f,g),!h,i``)."""
    requirements: list[tuple[str, str, frozenset[str]]] = []
    for raw in _split_requirements(selector or ""):
        m = _REQUIREMENT.match(raw)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
        op = (m["op"] or "").strip() or ("!exists" if m["neg"] else "exists")
        values = frozenset(item.strip() for item in (m["value"] or "").strip("()").split(","))
        requirements.append((m["key"], op, values))
    return lambda labels: all(_satisfied(labels, *r) for r in requirements)


def selector_string(selector: Obj | None) -> str:
    """A ``LabelSelector`` object (matchLabels, matchExpressions) in its string form."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr["operator"], expr["key"], ",".join(expr.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


# What `kubectl get events --field-selector involvedObject.kind=Deployment` needs besides the
# two fields every type has; the real server accepts the event fields on events only.
FIELD_LABELS = frozenset({"metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.name",
                          "involvedObject.namespace", "involvedObject.uid", "reason", "type"})


def _field(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def field_selector(selector: str | None) -> Callable[[Obj], bool]:
    checks: list[Callable[[Obj], bool]] = []
    for raw in _split_requirements(selector or ""):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m or m[1] not in FIELD_LABELS:
            raise ApiError(400, "BadRequest", f"field label not supported: {raw}")
        path, op, value = m[1], m[2], m[3]
        checks.append((lambda p, v, eq: lambda o: (_field(o, p) == v) == eq)(path, value, op != "!="))
    return lambda obj: all(check(obj) for check in checks)


# --- admission: defaulting and the validation the rollout can trip over ---------------------

def _default_workload(spec: Obj, *, deployment: bool) -> None:
    spec.setdefault("replicas", 1)
    spec.setdefault("minReadySeconds", 0)
    if deployment:
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            strategy.setdefault("rollingUpdate", {"maxSurge": "25%", "maxUnavailable": "25%"})


def _default_pod_spec(spec: Obj) -> None:
    for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                       ("dnsPolicy", "ClusterFirst"), ("securityContext", {}), ("schedulerName", "default-scheduler")):
        spec.setdefault(key, value)
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        # ``resources: {}`` is what a typed Go client sends back (a struct is never omitted);
        # without it the template kubectl rollout undo restores would differ from the stored one.
        c.setdefault("resources", {})
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "Always" if c.get("image", "").endswith(":latest") or ":" not in
                     c.get("image", "").rsplit("/", 1)[-1] else "IfNotPresent")
        for port in c.get("ports") or []:
            port.setdefault("protocol", "TCP")


def _default_pod_template(template: Obj) -> None:
    # Go encodes the zero ``metav1.Time`` of a template as null; typed clients send it back.
    template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    _default_pod_spec(template.setdefault("spec", {}))


def admit(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    """Defaults and validation applied to every create and update of the main resource."""
    name = obj["metadata"].get("name", "")
    if rt.kind in ("Deployment", "ReplicaSet"):
        spec = obj.setdefault("spec", {})
        _default_workload(spec, deployment=rt.kind == "Deployment")
        _default_pod_template(spec.setdefault("template", {}))
        selector = spec.get("selector")
        if not selector:
            raise invalid(rt, name, "spec.selector: Required value")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not label_selector(selector_string(selector))(labels):
            raise invalid(rt, name, "spec.template.metadata.labels: Invalid value: "
                                    "`selector` does not match template `labels`")
        if not (spec.get("template") or {}).get("spec", {}).get("containers"):
            raise invalid(rt, name, "spec.template.spec.containers: Required value")
        if old is not None and old["spec"].get("selector") != selector:
            raise invalid(rt, name, "spec.selector: Invalid value: field is immutable")
        if not isinstance(spec["replicas"], int) or spec["replicas"] < 0:
            raise invalid(rt, name, "spec.replicas: Invalid value: must be greater than or equal to 0")
    elif rt.kind == "Pod":
        _default_pod_spec(obj.setdefault("spec", {}))
    elif rt.kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if old is not None and "clusterIP" in old.get("spec", {}):
            spec["clusterIP"] = old["spec"]["clusterIP"]
        spec.setdefault("clusterIP", f"10.96.{len(name) % 250}.{sum(map(ord, name)) % 250 + 2}")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


# --- store --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One entry of the watch log."""

    rv: int
    key: str
    type: str
    object: Obj


@dataclass
class Store:
    """Every object of the emulated cluster, plus the watch event log."""

    on_write: Callable[[], None] = lambda: None
    history: int = 20000
    lock: threading.RLock = field(default_factory=threading.RLock)
    _objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    # The same objects by (type, namespace): the controller lists one namespace's objects
    # for every owner on every pass, and a scan of the whole cluster each time made a pass
    # cost grow with the square of the number of targets.
    _by_namespace: dict[tuple[str, str], dict[str, Obj]] = field(default_factory=dict)
    # Namespaces written since the controller last looked: it reconciles those, not the
    # whole cluster, on each write.
    _dirty: set[str] = field(default_factory=set)
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Container logs by (namespace, pod, container): what a kubelet would serve for pods/log.
    logs: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    _last_rv: int = 0
    _events: deque[Event] = field(default_factory=deque)

    # -- reads ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._last_rv

    def get(self, key: str, namespace: str | None, name: str) -> Obj:
        """The object, or ``ApiError`` 404. ``key`` as ``"apps/deployments"`` / ``"configmaps"``."""
        rt = resource(key)
        with self.lock:
            obj = self._objects.get((rt.key, namespace or "", name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def peek(self, key: str, namespace: str | None, name: str) -> Obj | None:
        """The stored object itself, not a copy, or None: for hot read-only paths (the
        synthetic app reads every target several times a second). Writers replace stored
        objects and never change them in place, so what this returns stays consistent;
        the caller must not modify it."""
        rt = resource(key)
        with self.lock:
            return self._objects.get((rt.key, namespace or "", name))

    def find(self, key: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(key, namespace, name)
        except ApiError:
            return None

    def list(self, key: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None) -> list[Obj]:
        """Objects of one type, in one namespace (or all when ``namespace`` is None)."""
        rt = resource(key)
        match_labels, match_fields = label_selector(labels), field_selector(fields)
        with self.lock:
            if namespace is not None:
                scope = [(namespace, self._by_namespace.get((rt.key, namespace), {}))]
            else:
                scope = sorted((ns, objs) for (k, ns), objs in self._by_namespace.items() if k == rt.key)
            found = [
                copy.deepcopy(o) for _, objs in scope for _, o in sorted(objs.items())
                if match_labels(o["metadata"].get("labels") or {}) and match_fields(o)
            ]
        return found

    def take_dirty(self) -> set[str]:
        """Namespaces written since the last call ("" for cluster-scoped objects)."""
        with self.lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    def _put(self, key: tuple[str, str, str], obj: Obj) -> None:
        self._dirty.add(key[1])
        self._objects[key] = obj
        self._by_namespace.setdefault(key[:2], {})[key[2]] = obj

    def _pop(self, key: tuple[str, str, str]) -> Obj | None:
        self._dirty.add(key[1])
        self._by_namespace.get(key[:2], {}).pop(key[2], None)
        return self._objects.pop(key, None)

    def events_after(self, rv: int) -> tuple[builtins.list[Event], bool]:
        """Events newer than ``rv``, and False if ``rv`` is older than the kept log (410 Gone)."""
        with self.lock:
            if self._events and rv < self._events[0].rv - 1 and rv < self._last_rv:
                return [], False
            return [e for e in self._events if e.rv > rv], True

    # -- writes --------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _record(self, rt: ResourceType, kind: str, obj: Obj) -> None:
        self._events.append(Event(self._last_rv, rt.key, kind, copy.deepcopy(obj)))
        while len(self._events) > self.history:
            self._events.popleft()

    def create(self, key: str, namespace: str | None, obj: Obj, *, manager: str = UNNAMED_MANAGER) -> Obj:
        rt = resource(key)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            # The apiserver's SimpleNameGenerator: base cut to 58 characters, then five random
            # ones from Kubernetes' vowel-free alphabet (what {{pods}} regexes rely on).
            meta["name"] = meta["generateName"][:MAX_GENERATE_BASE] + "".join(
                secrets.choice(NAME_ALPHABET) for _ in range(5))
        name = meta.get("name")
        if not name:
            raise invalid(rt, "", "metadata.name: Required value: name or generateName is required")
        ns = (namespace or meta.get("namespace") or "") if rt.namespaced else ""
        with self.lock:
            if rt.namespaced and ("/namespaces", "", ns) not in self._objects:
                raise not_found(resource("namespaces"), ns)
            if (rt.key, ns, name) in self._objects:
                what = f"{rt.name}.{rt.group}" if rt.group else rt.name
                raise ApiError(409, "AlreadyExists", f'{what} "{name}" already exists', kind=rt.name,
                               name=name, group=rt.group)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            admit(rt, obj, None)
            if rt.namespaced:
                meta["namespace"] = ns
            meta.pop("resourceVersion", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if rt.tracks_generation:
                meta["generation"] = 1
                obj["status"] = obj.get("status") if rt.kind == "Namespace" else {}
            if rt.kind == "Namespace":
                obj["status"] = {"phase": "Active"}
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            meta.pop("managedFields", None)
            k8s_fields.record(None, obj, manager=manager, api_version=rt.api_version, now=now_rfc3339())
            meta["resourceVersion"] = self._next_rv()
            self._put((rt.key, ns, name), obj)
            self._record(rt, "ADDED", obj)
        self.on_write()
        return copy.deepcopy(obj)

    def update(self, key: str, namespace: str | None, name: str, obj: Obj, *, subresource: str = "",
               manager: str = UNNAMED_MANAGER) -> Obj:
        """PUT semantics: a ``resourceVersion`` in ``obj`` must match the stored one."""
        rt = resource(key)
        ns = (namespace or "") if rt.namespaced else ""
        with self.lock:
            old = self._objects.get((rt.key, ns, name))
            if old is None:
                raise not_found(rt, name)
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            sent_rv = meta.get("resourceVersion")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name, "the object has been modified; please apply your changes to the "
                                         "latest version and try again")
            if meta.get("name", name) != name:
                raise invalid(rt, name, "metadata.name: Invalid value: the name of the object does not match")
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = obj.get("status", {})
            else:
                new = obj
                for immutable in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                    if immutable in old["metadata"]:
                        meta[immutable] = old["metadata"][immutable]
                    else:
                        meta.pop(immutable, None)
                meta.pop("deletionTimestamp", None)
                new["apiVersion"], new["kind"] = rt.api_version, rt.kind
                admit(rt, new, old)
                if rt.tracks_generation:
                    new["status"] = copy.deepcopy(old.get("status", {}))
                    if new.get("spec") != old.get("spec"):
                        meta["generation"] = old["metadata"].get("generation", 1) + 1
            # Clients send back what they read; the server alone keeps managedFields.
            new["metadata"]["managedFields"] = old["metadata"].get("managedFields") or []
            if not new["metadata"]["managedFields"]:
                new["metadata"].pop("managedFields")
            if new == old:
                return copy.deepcopy(old)  # a no-op write does not bump resourceVersion
            k8s_fields.record(old, new, manager=manager, api_version=rt.api_version, now=now_rfc3339(),
                              subresource=subresource)
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._put((rt.key, ns, name), new)
            self._record(rt, "MODIFIED", new)
        self.on_write()
        return copy.deepcopy(new)

    def mutate(self, key: str, namespace: str | None, name: str, change: Callable[[Obj], Obj],
               *, subresource: str = "", manager: str = UNNAMED_MANAGER) -> Obj:
        """Read-modify-write under the lock (PATCH): ``change`` gets a copy, returns the new object.
        A ``resourceVersion`` the change puts into metadata acts as a precondition."""
        rt = resource(key)
        with self.lock:
            current = self.get(key, namespace, name)
            rv = current["metadata"]["resourceVersion"]
            new = change(copy.deepcopy(current))
            if new.get("metadata", {}).get("resourceVersion", rv) != rv:
                raise conflict(rt, name, "the object has been modified; please apply your changes to the "
                                         "latest version and try again")
            return self.update(key, namespace, name, new, subresource=subresource, manager=manager)

    def delete(self, key: str, namespace: str | None, name: str) -> Obj:
        """Delete and garbage-collect dependents (ownerReferences), as background propagation does."""
        rt = resource(key)
        ns = (namespace or "") if rt.namespaced else ""
        with self.lock:
            old = self._pop((rt.key, ns, name))
            if old is None:
                raise not_found(rt, name)
            self._next_rv()
            old = copy.deepcopy(old)  # a reader may hold the stored object (peek)
            old["metadata"]["resourceVersion"] = str(self._last_rv)
            self._record(rt, "DELETED", old)
            uid = old["metadata"]["uid"]
            dependents = [
                (k, dns, dname) for (k, dns, dname), o in self._objects.items()
                if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or [])
            ]
            if rt.kind == "Namespace":
                dependents += [(k, dns, dname) for (k, dns, dname) in self._objects if dns == name]
            for dkey, dns, dname in dependents:
                if (dkey, dns, dname) in self._objects:
                    self.delete(dkey, dns or None, dname)
        self.on_write()
        return old
