"""``Cluster`` over the Kubernetes API, with the official ``kubernetes`` client as transport.

Design decisions:

* Requests go through ``kubernetes.client.ApiClient`` (so kubeconfig, in-cluster service
  accounts, TLS and auth plugins work as everywhere else) but bodies stay plain JSON dicts
  rather than generated models: a rollout touches a handful of fields, and the raw form is
  what patches and the emulator speak.
* Every operation is a *converge* step: read, compare with the goal, write only the
  difference. Re-running after a crash (or a lost response) therefore finishes the job and
  a repeated call writes nothing. Two layers of retry make it safe under concurrent
  writers and flaky servers: each request retries 5xx/429/connection errors/timeouts with
  capped exponential backoff (then ``ClusterUnavailable``); each operation re-reads and
  starts over on 409 (stale ``resourceVersion``, AlreadyExists on create).
* Writes that depend on what was read carry that ``resourceVersion`` (a PUT, or a JSON
  patch that restates it), so a concurrent change makes them fail with 409 instead of
  overwriting it; writes that are correct whatever else changed (image, env, one
  annotation, replicas) are unconditional strategic/JSON merge patches, which keep the
  sidecars and env vars a ``PUT`` of a stale copy would clobber.
* ``undo`` is ``kubectl rollout undo`` (the previous ReplicaSet's template becomes the
  Deployment's) plus a marker annotation recording the move, so a re-run after a crash does
  not toggle back to the bad revision as a second ``kubectl rollout undo`` would.
* Autoscalers: one, stable's, and the canary beside it. The canary's pods carry stable's
  selector labels (the Service must reach them), so stable's HPA counts them as its own, and
  a second HPA on the canary would pick the same pods: from Kubernetes 1.26
  (kubernetes#112011) both then stop scaling (AmbiguousSelector) for the whole rollout. And
  since stable's HPA counts every pod behind the selector but scales only stable, it sizes
  stable for the whole service; shrinking stable under it does not hold (without
  ``behavior`` its downscale stabilization puts back the highest count of the last 5 min,
  and its next scale sizes stable for the whole service again). So with an autoscaler a
  canary phase never writes stable's replicas: it narrows stable's HPA to stable's share of its min/max (the
  original spec kept on it, ``HPA_ORIGINAL``, and put back exactly when the canary goes),
  runs the canary at its share beside what the HPA keeps stable at, and
  ``follow_autoscaler`` re-sizes the canary each round as the HPA moves stable. Capacity
  errs high, never low: about 1/(1 − share) of the need (11 % more at 10 %, double at 50 %),
  within the original max. Flagger avoids the overlap by relabelling its primary;
  phasegate leaves the user's Deployment, selector and Service as they are.
* Canary capacity: surge first. ``set_canary`` creates or grows the canary and then gives
  stable's pods up one per canary pod that is Ready (``capacity.stable_while_surging``),
  polling until stable is at its share, the canary reports ProgressDeadlineExceeded, or
  the caller's timeout; a canary that never starts costs no serving capacity. Stable is
  scaled back up before the canary is deleted, so capacity never dips on the way back
  either.
* Checks from outside the cluster go through the API server's service proxy
  (``phasegate.checkroute`` says why and when). ``open_session`` gives each check a client
  of its own, on a copy of this adapter's configuration (same server, TLS and
  credentials, whatever the kubeconfig's auth is), with a pool as large as the check's
  concurrency: the shared pool is sized for the rollout's own calls, and a load check
  squeezed through it would measure the pool, not the Service. A proxied request is sent
  once and never retried — a check counts failures, it does not hide them — and the
  token never leaves the client (answers carry only a status and the API server's message).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import urllib3
from kubernetes import client, config

from phasegate import drift, errors
from phasegate.capacity import canary_beside, canary_split, scaled_bounds, stable_while_surging
from phasegate.checkroute import ServiceURL
from phasegate.ports import (
    CANARY,
    TRACK_LABEL,
    AutoscalerState,
    ProxyAnswer,
    TargetRef,
    TargetState,
    WorkloadState,
)

Obj = dict[str, Any]
T = TypeVar("T")

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# Written with every undo: {"from": <template hash left>, "to": <hash restored>, "revision": N}.
UNDO_ANNOTATION = "phasegate.dev/undo"
# On stable's autoscaler while phasegate narrows it: its spec before the rollout, as JSON,
# so promotion, rollback or a rerun after a crash can put back exactly what was there.
HPA_ORIGINAL = "phasegate.dev/original-autoscaler"
# The mirror HPA earlier versions made for the canary (``<hpa>-canary``, managed-by
# phasegate): never made now (see "Autoscalers" above), deleted where one is left.
CANARY_HPA_SUFFIX = "-canary"

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class Permission(NamedTuple):
    """One RBAC rule line: verb on resource in API group, narrowed to one object when
    ``name`` says which (``target``, ``canary`` or ``configmap``: the Role's resourceNames)."""

    verb: str
    group: str
    resource: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f" ({self.name})" if self.name else "")


# Everything this adapter sends, for preflight and the RBAC Role in deployments/k8s/.
# (SelfSubjectAccessReview itself is allowed to every authenticated user.) ``create`` has
# no name: the API server authorizes a create before the object has one, so resourceNames
# cannot narrow it (see deployments/k8s/README.md for what it still allows).
REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission("get", "apps", "deployments", "target"),
    Permission("get", "apps", "deployments", "canary"),
    Permission("list", "apps", "deployments"),
    Permission("create", "apps", "deployments"),
    Permission("update", "apps", "deployments", "canary"),
    Permission("patch", "apps", "deployments", "target"),
    Permission("patch", "apps", "deployments", "canary"),
    Permission("delete", "apps", "deployments", "canary"),
    Permission("list", "apps", "replicasets"),
    Permission("list", "autoscaling", "horizontalpodautoscalers"),
    Permission("get", "", "configmaps", "configmap"),
    Permission("patch", "", "configmaps", "configmap"),
)
# Only where an autoscaler scales the target (named by it: "autoscaler"): narrowing it and
# putting it back. (A mirror HPA an earlier phasegate left is deleted if found; that
# delete needs ``delete horizontalpodautoscalers`` on ``<hpa>-canary``, asked only then.)
AUTOSCALER_PERMISSIONS: tuple[Permission, ...] = (
    Permission("update", "autoscaling", "horizontalpodautoscalers", "autoscaler"),
)
# A namespace where no phase runs a canary (staging) never creates, updates or deletes one,
# nor patches one (set_env only patches a canary that exists); it still looks for it.
CANARY_ONLY_PERMISSIONS = frozenset(p for p in REQUIRED_PERMISSIONS if p.verb in ("create", "update", "delete")
                                    or (p.verb == "patch" and p.name == "canary"))


def required_permissions(*, canary: bool = True, configmap: bool = True,
                         autoscaler: bool = False) -> tuple[Permission, ...]:
    """What a namespace's Role must grant: with a canary phase there or not, with a
    ConfigMap feature flag or not, with an autoscaler on the target (and a canary) or not."""
    base = tuple(p for p in REQUIRED_PERMISSIONS
                 if (canary or p not in CANARY_ONLY_PERMISSIONS) and (configmap or p.resource != "configmaps"))
    return base + (AUTOSCALER_PERMISSIONS if autoscaler and canary else ())


# The oldest server the adapter is tested against (the real control plane in the suite runs
# v1.20.2). Everything it sends — apps/v1 Deployments and ReplicaSets, core/v1 ConfigMaps,
# authorization.k8s.io/v1 access reviews, the three patch types — is GA and unchanged from
# 1.16 to today, except the HorizontalPodAutoscaler: autoscaling/v2 is served only from 1.23,
# so older servers are asked through autoscaling/v2beta2 (served 1.12-1.25), whose fields the
# adapter reads and writes (minReplicas, maxReplicas, scaleTargetRef, metrics, behavior) are
# the same. Older than 1.20 is refused by `phasegate doctor`.
MIN_SERVER_VERSION = (1, 20)
HPA_V2_SINCE = (1, 23)


class ServerVersion(NamedTuple):
    """What ``GET /version`` says; ``minor`` without the "+" some providers append."""

    major: int
    minor: int
    git_version: str

    @property
    def supported(self) -> bool:
        return (self.major, self.minor) >= MIN_SERVER_VERSION

    def __str__(self) -> str:
        return self.git_version or f"v{self.major}.{self.minor}"


def parse_server_version(info: Mapping[str, Any]) -> ServerVersion:
    def number(text: Any) -> int:
        digits = "".join(ch for ch in str(text) if ch.isdigit())
        return int(digits) if digits else 0

    return ServerVersion(number(info.get("major")), number(info.get("minor")), str(info.get("gitVersion", "")))


class _Conflict(Exception):
    """409: someone else wrote first (or the object already exists); re-read and retry."""


def _deployment_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")


def hpa_api_version(version: ServerVersion) -> str:
    """The HorizontalPodAutoscaler group/version to use on a server of ``version``."""
    return "autoscaling/v2" if (version.major, version.minor) >= HPA_V2_SINCE else "autoscaling/v2beta2"


def _configmap_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{name}"


def _selector_string(selector: Obj) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        values = ",".join(expr.get("values") or [])
        parts.append({"In": f"{expr['key']} in ({values})", "NotIn": f"{expr['key']} notin ({values})",
                      "Exists": expr["key"], "DoesNotExist": f"!{expr['key']}"}[expr["operator"]])
    return ",".join(parts)


def _without_hash(template: Obj) -> Obj:
    t = json.loads(json.dumps(template))
    (t.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return t


def _revision(obj: Obj) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _container(d: Obj, name: str | None) -> Obj:
    containers = d["spec"]["template"]["spec"].get("containers") or []
    if name is None and containers:
        return containers[0]
    for c in containers:
        if c["name"] == name:
            return c
    raise errors.TargetNotFound(f"container {name!r} not found in deployment "
                                f"{d['metadata'].get('namespace')}/{d['metadata']['name']}")


def workload_state(d: Obj, container: str | None) -> WorkloadState:
    """The ``WorkloadState`` of a Deployment dict; ``container`` None means the first one."""
    c = _container(d, container)
    status = d.get("status") or {}
    return WorkloadState(
        name=d["metadata"]["name"], image=c.get("image", ""), replicas=d["spec"].get("replicas", 1),
        ready_replicas=status.get("readyReplicas", 0), updated_replicas=status.get("updatedReplicas", 0),
        available_replicas=status.get("availableReplicas", 0), revision=_revision(d),
        generation=d["metadata"].get("generation", 0), observed_generation=status.get("observedGeneration", 0),
        annotations=dict(d["metadata"].get("annotations") or {}),
        env={e["name"]: e["value"] for e in c.get("env") or [] if "value" in e},
        managers=drift.workload_owners(d["metadata"].get("managedFields"), c["name"],
                                       [e["name"] for e in c.get("env") or []]),
    )


# Labels on a Deployment by which a GitOps controller claims it. Copied onto the canary
# they make Argo CD (label tracking) or Flux (kustomize/helm controllers) count it as theirs,
# find it missing from Git and prune it mid-soak. Only the Deployment's own labels are
# filtered: the pod template keeps every label, since the selector and the Service need them
# (pods belong to the canary's ReplicaSet and are never tracked or pruned by those tools).
# Annotations are not copied at all, so Argo CD's tracking-id annotation, Helm's release
# annotations and kubectl's last-applied-configuration stay on the stable Deployment.
GITOPS_LABELS = frozenset({"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"})
GITOPS_LABEL_PREFIXES = ("argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/",
                         "fluxcd.io/", "helm.sh/")
MANAGED_BY = "app.kubernetes.io/managed-by"


def canary_labels(stable_labels: Mapping[str, str]) -> dict[str, str]:
    """The stable Deployment's labels a canary may carry (``app``, ``team``, ... but nothing a
    GitOps controller claims it by), marked as phasegate's."""
    kept = {k: v for k, v in stable_labels.items()
            if k not in GITOPS_LABELS and not k.startswith(GITOPS_LABEL_PREFIXES)}
    return {**kept, MANAGED_BY: "phasegate"}


def _ready_on_template(d: Obj) -> int:
    """Ready pods of a Deployment that run its current template: none until the controller
    has seen the latest spec, and never more than it has updated."""
    status = d.get("status") or {}
    if status.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
        return 0
    return min(status.get("readyReplicas", 0), status.get("updatedReplicas", 0))


def _scales(hpa: Obj, deployment: str) -> bool:
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    return target.get("kind") == "Deployment" and target.get("name") == deployment


def _autoscaler_state(hpas: Sequence[Obj], ref: TargetRef) -> AutoscalerState | None:
    hpa = next((h for h in hpas if _scales(h, ref.deployment)), None)
    if hpa is None:
        return None
    original = (hpa["metadata"].get("annotations") or {}).get(HPA_ORIGINAL)
    bounds = None
    if original:
        spec = json.loads(original)
        bounds = (int(spec.get("minReplicas") or 1), int(spec["maxReplicas"]))
    return AutoscalerState(
        name=hpa["metadata"]["name"], min_replicas=int(hpa["spec"].get("minReplicas") or 1),
        max_replicas=int(hpa["spec"]["maxReplicas"]),
        desired_replicas=int((hpa.get("status") or {}).get("desiredReplicas", 0)), original_bounds=bounds,
        canary_autoscaler=_left_mirror(hpas, hpa) is not None,
        scaling_stopped=_scaling_stopped(hpa, hpas))


def _left_mirror(hpas: Sequence[Obj], stable_hpa: Obj) -> Obj | None:
    """The mirror of ``stable_hpa`` an earlier phasegate made for the canary, if one is left."""
    name = stable_hpa["metadata"]["name"] + CANARY_HPA_SUFFIX
    return next((h for h in hpas if h["metadata"]["name"] == name
                 and (h["metadata"].get("labels") or {}).get(MANAGED_BY) == "phasegate"), None)


def _scaling_stopped(hpa: Obj, hpas: Sequence[Obj]) -> str | None:
    """Why the autoscaler cannot scale, where a person must fix it (its selector picks pods
    another HPA picks too), or None. Its status lags the other HPA's deletion by a sync
    period, so a condition naming only HPAs that are gone is stale and not reported."""
    for c in (hpa.get("status") or {}).get("conditions") or []:
        if c.get("type") != "ScalingActive" or c.get("status") != "False" or c.get("reason") != "AmbiguousSelector":
            continue
        message = str(c.get("message", ""))
        named = re.search(r"\[([^\]]*)\]", message)
        others = {n.rsplit("/", 1)[-1] for n in named[1].split()} - {hpa["metadata"]["name"]} if named else set()
        present = {h["metadata"]["name"] for h in hpas}
        if not named or others & present:
            return f"AmbiguousSelector: {message}"
    return None


def _deadline_exceeded(d: Obj) -> bool:
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
               for c in (d.get("status") or {}).get("conditions") or [])


def _pooled(configuration: client.Configuration) -> client.Configuration:
    # The client sizes its pool at 5 per CPU; a worker running several rollouts (or one
    # rollout's rollback beside its notifications) discarded connections and re-handshook.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
    return configuration


def api_status_message(status: int, content_type: str, data: bytes) -> str | None:
    """The message of a ``Status`` the API server answered with itself, else None: a proxied
    Service's own answer passes through untouched, whatever its status."""
    if status < 400 or "json" not in content_type:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("kind") != "Status" or body.get("apiVersion") != "v1":
        return None
    return f"{body.get('reason') or status}: {body.get('message', '')}"


class ServiceProxySession:
    """One check's requests through the API server's service proxy, on a pool of its own."""

    def __init__(self, configuration: client.Configuration, connections: int) -> None:
        configuration = copy.deepcopy(configuration)
        configuration.connection_pool_maxsize = max(connections, 1)
        self._api = client.ApiClient(configuration)

    def request(self, method: str, target: ServiceURL, timeout: float) -> ProxyAnswer:
        path = target.proxy_path + (f"?{target.query}" if target.query else "")
        params = self._api.param_serialize(method=method, resource_path=path, header_params={"Accept": "*/*"},
                                           auth_settings=["BearerToken"])
        try:
            response = self._api.call_api(*params, _request_timeout=timeout)
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError, client.ApiException) as exc:
            # The exception's text names the URL, never the header carrying the token.
            raise errors.ClusterUnavailable(f"API server unreachable: {type(exc).__name__}") from None
        content_type = str(response.headers.get("Content-Type", ""))
        return ProxyAnswer(response.status, api_status_message(response.status, content_type, data or b""))

    def close(self) -> None:
        self._api.close()


class KubernetesCluster:
    """The rollout's ``Cluster``: idempotent, conflict-safe operations on one cluster."""

    def __init__(self, api_client: client.ApiClient, *, poll_interval: float = 0.1, attempts: int = 8,
                 backoff: float = 0.05, max_backoff: float = 2.0, conflict_attempts: int = 20,
                 request_timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self.api = api_client
        self.poll_interval = poll_interval
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.conflict_attempts = conflict_attempts
        self.request_timeout = request_timeout
        self._random = random.Random()
        self._hpa_group_version: str | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **options: Any) -> KubernetesCluster:
        configuration = client.Configuration()
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        return cls(client.ApiClient(_pooled(configuration)), **options)

    @classmethod
    def in_cluster(cls, **options: Any) -> KubernetesCluster:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return cls(client.ApiClient(_pooled(configuration)), **options)

    @classmethod
    def from_url(cls, url: str, token: str | None = None, **options: Any) -> KubernetesCluster:
        """Plain URL (the emulator, ``kubectl proxy``); ``token`` as a bearer token if given."""
        configuration = client.Configuration(host=url)
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(client.ApiClient(_pooled(configuration)), **options)

    def close(self) -> None:
        self.api.close()

    # -- transport -----------------------------------------------------------------------

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        time.sleep(delay * (0.5 + self._random.random() / 2))

    def _request(self, method: str, path: str, *, body: Any = None, content_type: str | None = None,
                 query: Mapping[str, str] | None = None) -> Obj:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if method in ("POST", "PUT", "PATCH"):
            # Named in managedFields, so drift checks can tell our writes from anyone else's.
            query = {**(query or {}), "fieldManager": drift.FIELD_MANAGER}
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                self._sleep_backoff(attempt - 1)
            try:
                params = self.api.param_serialize(method=method, resource_path=path,
                                                  query_params=list((query or {}).items()),
                                                  header_params=dict(headers), body=body,
                                                  auth_settings=["BearerToken"])
                response = self.api.call_api(*params, _request_timeout=self.request_timeout)
                data = response.read()
            except (urllib3.exceptions.HTTPError, OSError, client.ApiException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            status = response.status
            payload: Obj = {}
            if data:
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = {"message": data[:200].decode(errors="replace")}
            if 200 <= status < 300:
                return payload
            message = f"{method} {path}: {status} {payload.get('reason', '')}: {payload.get('message', '')}"
            if status >= 500 or status == 429:
                last = message
                continue
            if status == 404:
                raise errors.TargetNotFound(message)
            if status == 403:
                raise errors.Forbidden(message)
            if status == 409:
                raise _Conflict(message)
            raise errors.PermanentError(message)
        raise errors.ClusterUnavailable(f"{method} {path} failed after {self.attempts} attempts: {last}")

    def _converge(self, step: Callable[[], T]) -> T:
        """Run a read-compare-write step until it gets through without a 409."""
        for attempt in range(self.conflict_attempts):
            try:
                return step()
            except _Conflict:
                self._sleep_backoff(min(attempt, 4))
        raise errors.ClusterUnavailable(f"still conflicting after {self.conflict_attempts} attempts")

    def _get_deployment(self, namespace: str, name: str) -> Obj:
        return self._request("GET", _deployment_path(namespace, name))

    def _find_deployment(self, namespace: str, name: str) -> Obj | None:
        try:
            return self._get_deployment(namespace, name)
        except errors.TargetNotFound:
            return None

    def _patch(self, path: str, patch: Any, content_type: str = STRATEGIC) -> Obj:
        return self._request("PATCH", path, body=patch, content_type=content_type)

    def _scale(self, d: Obj, replicas: int) -> None:
        if d["spec"].get("replicas") != replicas:
            self._patch(_deployment_path(d["metadata"]["namespace"], d["metadata"]["name"]),
                        {"spec": {"replicas": replicas}}, MERGE)

    # -- Cluster -------------------------------------------------------------------------

    def read_target(self, ref: TargetRef) -> TargetState:
        stable = self._get_deployment(ref.namespace, ref.deployment)
        canary = self._find_deployment(ref.namespace, ref.canary)
        hpas = self._request("GET", self._hpa_path(ref.namespace)).get("items") or []
        return TargetState(stable=workload_state(stable, ref.container),
                           canary=workload_state(canary, ref.container) if canary else None,
                           autoscaler=_autoscaler_state(hpas, ref))

    # -- autoscalers ---------------------------------------------------------------------

    def _stable_hpa(self, ref: TargetRef) -> Obj | None:
        items = self._request("GET", self._hpa_path(ref.namespace)).get("items") or []
        return next((h for h in items if _scales(h, ref.deployment)), None)

    def _narrow_autoscaler(self, ref: TargetRef, hpa: Obj, share_percent: float) -> None:
        """Stable's autoscaler narrowed to stable's share of its own bounds."""
        annotations = hpa["metadata"].get("annotations") or {}
        original = json.loads(annotations[HPA_ORIGINAL]) if HPA_ORIGINAL in annotations else hpa["spec"]
        # Stable's share of both, so stable and the canary beside it stay within the original's.
        low, high = scaled_bounds(100 - share_percent, int(original.get("minReplicas") or 1),
                                  int(original["maxReplicas"]))
        stable_spec = {**original, "minReplicas": low, "maxReplicas": high}
        if hpa["spec"] != stable_spec or HPA_ORIGINAL not in annotations:
            hpa["spec"] = stable_spec
            hpa["metadata"]["annotations"] = {**annotations, HPA_ORIGINAL: json.dumps(original, sort_keys=True)}
            self._request("PUT", self._hpa_path(ref.namespace, hpa["metadata"]["name"]), body=hpa)

    def _delete_left_mirror(self, ref: TargetRef, hpas: Sequence[Obj], stable_hpa: Obj) -> None:
        # A mirror and stable's HPA pick the canary's pods both: neither scales while it exists.
        mirror = _left_mirror(hpas, stable_hpa)
        if mirror is not None:
            with contextlib.suppress(errors.TargetNotFound):
                self._request("DELETE", self._hpa_path(ref.namespace, mirror["metadata"]["name"]))

    def _restore_autoscaler(self, ref: TargetRef) -> None:
        items = self._request("GET", self._hpa_path(ref.namespace)).get("items") or []
        hpa = next((h for h in items if _scales(h, ref.deployment)), None)
        if hpa is None:
            return
        annotations = dict(hpa["metadata"].get("annotations") or {})
        if HPA_ORIGINAL in annotations:
            hpa["spec"] = json.loads(annotations.pop(HPA_ORIGINAL))
            hpa["metadata"]["annotations"] = annotations
            self._request("PUT", self._hpa_path(ref.namespace, hpa["metadata"]["name"]), body=hpa)
        self._delete_left_mirror(ref, items, hpa)

    def _find(self, path: str) -> Obj | None:
        try:
            return self._request("GET", path)
        except errors.TargetNotFound:
            return None

    def set_image(self, ref: TargetRef, image: str, replicas: int | None = None) -> None:
        if replicas is not None and self._stable_hpa(ref) is not None:
            # The autoscaler owns the count: promotion keeps what both tracks serve now.
            canary = self._find_deployment(ref.namespace, ref.canary)
            replicas = self._get_deployment(ref.namespace, ref.deployment)["spec"].get("replicas", 1) + (
                _ready_on_template(canary) if canary is not None else 0)

        def step() -> None:
            d = self._get_deployment(ref.namespace, ref.deployment)
            same_image = _container(d, ref.container).get("image") == image
            if same_image and (replicas is None or d["spec"].get("replicas") == replicas):
                return
            patch: Obj = {"spec": {"template": {"spec": {"containers": [{"name": ref.container, "image": image}]}}}}
            if replicas is not None:
                patch["spec"]["replicas"] = replicas
            self._patch(_deployment_path(ref.namespace, ref.deployment), patch)

        self._converge(step)

    def _canary_body(self, stable: Obj, ref: TargetRef, image: str, replicas: int) -> Obj:
        spec = stable["spec"]
        template = json.loads(json.dumps(spec["template"]))
        template.setdefault("metadata", {}).setdefault("labels", {})[TRACK_LABEL] = CANARY
        for c in template["spec"]["containers"]:
            if c["name"] == ref.container:
                c["image"] = image
        selector = json.loads(json.dumps(spec["selector"]))
        selector.setdefault("matchLabels", {})[TRACK_LABEL] = CANARY
        canary_spec: Obj = {"replicas": replicas, "selector": selector, "template": template}
        for key in ("strategy", "minReadySeconds", "progressDeadlineSeconds", "revisionHistoryLimit"):
            if key in spec:
                canary_spec[key] = spec[key]
        labels = {**canary_labels(stable["metadata"].get("labels") or {}), TRACK_LABEL: CANARY}
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": ref.canary, "namespace": ref.namespace, "labels": labels},
                "spec": canary_spec}

    def set_canary(self, ref: TargetRef, image: str, share_percent: float, total_replicas: int,
                   timeout_seconds: float = 600.0) -> tuple[int, int]:
        items = self._request("GET", self._hpa_path(ref.namespace)).get("items") or []
        hpa = next((h for h in items if _scales(h, ref.deployment)), None)
        if hpa is not None:
            self._delete_left_mirror(ref, items, hpa)
            # The autoscaler controller writes its status all the time: re-read on each 409.
            self._converge(lambda: self._narrow_autoscaler(ref, self._stable_hpa(ref) or hpa, share_percent))
            stable_n = int(self._get_deployment(ref.namespace, ref.deployment)["spec"].get("replicas", 1))
            canary_n = canary_beside(share_percent, stable_n)
        else:
            canary_n, stable_n = canary_split(share_percent, total_replicas)

        def step() -> None:
            stable = self._get_deployment(ref.namespace, ref.deployment)
            desired = self._canary_body(stable, ref, image, canary_n)
            current = self._find_deployment(ref.namespace, ref.canary)
            if current is None:
                self._request("POST", _deployment_path(ref.namespace), body=desired)
            elif (current["spec"].get("replicas") != canary_n
                  or current["spec"]["template"] != desired["spec"]["template"]
                  or current["spec"]["selector"] != desired["spec"]["selector"]
                  or current["metadata"].get("labels") != desired["metadata"]["labels"]):
                if current["spec"]["selector"] != desired["spec"]["selector"]:
                    # The selector is immutable: a canary someone built differently is replaced.
                    self._request("DELETE", _deployment_path(ref.namespace, ref.canary))
                    raise _Conflict("canary selector differed; recreating")
                current["spec"].update(desired["spec"])
                current["metadata"]["labels"] = desired["metadata"]["labels"]
                self._request("PUT", _deployment_path(ref.namespace, ref.canary), body=current)

        self._converge(step)
        if hpa is not None:
            # Stable's replicas are its autoscaler's: the canary comes beside them, not out of them.
            return canary_n, stable_n
        deadline = time.monotonic() + timeout_seconds
        while True:
            canary = self._find_deployment(ref.namespace, ref.canary)
            ready = _ready_on_template(canary) if canary is not None else 0
            goal = stable_while_surging(total_replicas, stable_n, ready)
            self._converge(functools.partial(self._scale_stable, ref, goal))
            if goal == stable_n or canary is None or _deadline_exceeded(canary) \
                    or time.monotonic() >= deadline:
                return canary_n, stable_n
            time.sleep(self.poll_interval)

    def _scale_stable(self, ref: TargetRef, replicas: int) -> None:
        self._scale(self._get_deployment(ref.namespace, ref.deployment), replicas)

    def follow_autoscaler(self, ref: TargetRef, share_percent: float) -> tuple[int, int] | None:
        if self._stable_hpa(ref) is None:
            return None

        def step() -> tuple[int, int] | None:
            canary = self._find_deployment(ref.namespace, ref.canary)
            if canary is None:
                return None
            stable_n = int(self._get_deployment(ref.namespace, ref.deployment)["spec"].get("replicas", 1))
            canary_n = canary_beside(share_percent, stable_n)
            if canary["spec"].get("replicas") == canary_n:
                return None
            self._scale(canary, canary_n)
            return canary_n, stable_n

        return self._converge(step)

    def remove_canary(self, ref: TargetRef, total_replicas: int) -> None:
        if self._stable_hpa(ref) is not None:
            # What both tracks serve now goes to stable before the canary goes; its restored
            # autoscaler takes it from there.
            canary = self._find_deployment(ref.namespace, ref.canary)
            total_replicas = self._get_deployment(ref.namespace, ref.deployment)["spec"].get("replicas", 1) + (
                _ready_on_template(canary) if canary is not None else 0)

        def step() -> None:
            self._scale(self._get_deployment(ref.namespace, ref.deployment), total_replicas)
            self._restore_autoscaler(ref)
            with contextlib.suppress(errors.TargetNotFound):  # already gone: done
                self._request("DELETE", _deployment_path(ref.namespace, ref.canary),
                              query={"propagationPolicy": "Background"})

        self._converge(step)

    def wait_ready(self, namespace: str, deployment: str, timeout_seconds: float) -> WorkloadState:
        deadline = time.monotonic() + timeout_seconds
        while True:
            d = self._get_deployment(namespace, deployment)
            state = workload_state(d, None)
            status = d.get("status") or {}
            if state.observed_generation >= state.generation:
                for condition in status.get("conditions") or []:
                    if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
                        raise errors.ProgressDeadlineExceeded(
                            f"{namespace}/{deployment} exceeded its progress deadline "
                            f"({d['spec'].get('progressDeadlineSeconds', 600)}s): {condition.get('message', '')} "
                            f"{state.updated_replicas}/{state.replicas} updated, {state.ready_replicas} ready")
                if state.rolled_out and status.get("replicas", 0) == state.replicas:
                    return state
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{namespace}/{deployment} not rolled out after {timeout_seconds}s: "
                    f"{state.updated_replicas}/{state.replicas} updated, {state.ready_replicas} ready, "
                    f"{state.available_replicas} available, {status.get('replicas', 0)} total")
            time.sleep(self.poll_interval)

    def pod_template_hash(self, namespace: str, deployment: str) -> str | None:
        """The ``pod-template-hash`` of the ReplicaSet running the Deployment's current template
        (Argo's podTemplateHashValue); None if the Deployment or that ReplicaSet is missing."""
        d = self._find_deployment(namespace, deployment)
        if d is None:
            return None
        listing = self._request("GET", "/apis/apps/v1/namespaces/" + namespace + "/replicasets",
                                query={"labelSelector": _selector_string(d["spec"]["selector"])})
        uid, current = d["metadata"]["uid"], _without_hash(d["spec"]["template"])
        for rs in listing.get("items") or []:
            refs = rs["metadata"].get("ownerReferences") or []
            owned = any(o.get("uid") == uid and o.get("controller") for o in refs)
            if owned and _without_hash(rs["spec"]["template"]) == current:
                found = (rs["metadata"].get("labels") or {}).get(HASH_LABEL)
                return str(found) if found else None
        return None

    def undo(self, ref: TargetRef, to_image: str | None = None) -> int:
        def step() -> int:
            d = self._get_deployment(ref.namespace, ref.deployment)
            listing = self._request("GET", "/apis/apps/v1/namespaces/" + ref.namespace + "/replicasets",
                                    query={"labelSelector": _selector_string(d["spec"]["selector"])})
            uid = d["metadata"]["uid"]
            owned = [rs for rs in listing.get("items") or []
                     if any(o.get("uid") == uid and o.get("controller") for o in rs["metadata"].get("ownerReferences")
                            or [])]
            current = _without_hash(d["spec"]["template"])
            current_rs = next((rs for rs in owned if _without_hash(rs["spec"]["template"]) == current), None)
            earlier = [rs for rs in owned if _without_hash(rs["spec"]["template"]) != current]
            if to_image is not None:
                earlier = [rs for rs in earlier if _container({"spec": rs["spec"], "metadata": rs["metadata"]},
                                                              ref.container).get("image") == to_image]
            marker = json.loads((d["metadata"].get("annotations") or {}).get(UNDO_ANNOTATION, "{}"))
            if current_rs is not None and marker:
                current_hash = current_rs["metadata"].get("labels", {}).get(HASH_LABEL)
                latest_other = max(earlier, key=_revision, default=None)
                left_hash = (latest_other or {}).get("metadata", {}).get("labels", {}).get(HASH_LABEL)
                if marker.get("to") == current_hash and marker.get("from") == left_hash:
                    return int(marker["revision"])  # this undo already happened
            if not earlier:
                raise errors.PermanentError(f"{ref}: no previous revision to roll back to")
            target = max(earlier, key=_revision)
            from_hash = (current_rs or {}).get("metadata", {}).get("labels", {}).get(HASH_LABEL, "")
            to_hash = target["metadata"].get("labels", {}).get(HASH_LABEL, "")
            annotations = dict(d["metadata"].get("annotations") or {})
            annotations[UNDO_ANNOTATION] = json.dumps(
                {"from": from_hash, "to": to_hash, "revision": _revision(target)}, sort_keys=True)
            # Restating the resourceVersion we read makes the write fail with 409 if the
            # Deployment changed since, as a PUT would; kubectl's own undo patch omits it.
            self._patch(_deployment_path(ref.namespace, ref.deployment), [
                {"op": "replace", "path": "/metadata/resourceVersion", "value": d["metadata"]["resourceVersion"]},
                {"op": "replace", "path": "/spec/template", "value": _without_hash(target["spec"]["template"])},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ], JSON_PATCH)
            return _revision(target)

        return self._converge(step)

    def set_env(self, ref: TargetRef, name: str, value: str) -> None:
        def step() -> None:
            for deployment in (ref.deployment, ref.canary):
                d = self._find_deployment(ref.namespace, deployment)
                if d is None:
                    if deployment == ref.deployment:
                        raise errors.TargetNotFound(f"deployment {ref} not found")
                    continue
                env = {e["name"]: e for e in _container(d, ref.container).get("env") or []}
                if env.get(name) == {"name": name, "value": value}:
                    continue
                self._patch(_deployment_path(ref.namespace, deployment), {"spec": {"template": {"spec": {
                    "containers": [{"name": ref.container,
                                    "env": [{"name": name, "value": value, "valueFrom": None}]}]}}}})

        self._converge(step)

    def set_configmap_key(self, namespace: str, name: str, key: str, value: str) -> None:
        def step() -> None:
            if self.read_configmap(namespace, name).get(key) != value:
                self._patch(_configmap_path(namespace, name), {"data": {key: value}}, MERGE)

        self._converge(step)

    def read_configmap(self, namespace: str, name: str) -> Mapping[str, str]:
        return dict(self._request("GET", _configmap_path(namespace, name)).get("data") or {})

    def configmap_owners(self, namespace: str, name: str) -> Mapping[str, str]:
        cm = self._request("GET", _configmap_path(namespace, name))
        managed = cm["metadata"].get("managedFields")
        return {key: owner for key in cm.get("data") or {}
                if (owner := drift.field_owner(managed, ("f:data", f"f:{key}")))}

    def annotate(self, namespace: str, deployment: str, annotations: Mapping[str, str | None]) -> None:
        def step() -> None:
            current = self._get_deployment(namespace, deployment)["metadata"].get("annotations") or {}
            if all(current.get(k) == v for k, v in annotations.items()):
                return
            self._patch(_deployment_path(namespace, deployment), {"metadata": {"annotations": dict(annotations)}},
                        MERGE)

        self._converge(step)

    def find_annotated(self, namespaces: Sequence[str], key: str) -> list[WorkloadState]:
        found: list[WorkloadState] = []
        for namespace in namespaces:
            for d in self._request("GET", _deployment_path(namespace)).get("items") or []:
                if key in (d["metadata"].get("annotations") or {}):
                    found.append(workload_state(d, None))
        return found

    def server_version(self) -> ServerVersion:
        return parse_server_version(self._request("GET", "/version"))

    def _hpa_version(self) -> str:
        # Asked once per adapter: a server's version does not change under a rollout.
        if self._hpa_group_version is None:
            self._hpa_group_version = hpa_api_version(self.server_version())
        return self._hpa_group_version

    def _hpa_path(self, namespace: str, name: str | None = None) -> str:
        return (f"/apis/{self._hpa_version()}/namespaces/{namespace}/horizontalpodautoscalers"
                + (f"/{name}" if name else ""))

    def missing_permissions(self, ref: TargetRef, configmap: str | None = None, canary: bool = True,
                            autoscaler: str | None = None) -> list[str]:
        # Without a target name (doctor with no plan) only the verbs no object narrows are asked.
        names = {"target": ref.deployment or None, "canary": ref.canary if ref.deployment else None,
                 "configmap": configmap, "autoscaler": autoscaler}
        missing: list[str] = []
        wanted = required_permissions(canary=canary, configmap=configmap is not None, autoscaler=bool(autoscaler))
        for permission in wanted:
            attributes = {"namespace": ref.namespace, "verb": permission.verb, "group": permission.group,
                          "resource": permission.resource}
            if permission.name:
                if names[permission.name] is None:
                    continue
                attributes["name"] = str(names[permission.name])
            review = self._request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body={
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}})
            if not (review.get("status") or {}).get("allowed"):
                missing.append(f"{permission.verb} {permission.resource}"
                               + (f"/{attributes['name']}" if permission.name else ""))
        return missing

    # -- the service proxy (checks from outside the cluster) -----------------------------

    def open_session(self, connections: int) -> ServiceProxySession:
        return ServiceProxySession(self.api.configuration, connections)

    def proxy_allowed(self, namespace: str, proxy_name: str, verb: str) -> bool:
        review = self._request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": "", "resource": "services",
                                            "subresource": "proxy", "name": proxy_name}}})
        return bool((review.get("status") or {}).get("allowed"))

    def service_port_problem(self, namespace: str, service: str, port: str) -> str | None:
        try:
            svc = self._request("GET", f"/api/v1/namespaces/{namespace}/services/{service}")
        except errors.TargetNotFound:
            return f"Service {namespace}/{service} not found"
        except errors.Forbidden:
            return None  # may proxy without reading Services: the check's own answer will tell
        ports = (svc.get("spec") or {}).get("ports") or []
        if any(str(p.get("port")) == port or p.get("name") == port for p in ports):
            return None
        have = ", ".join(f"{p.get('name') or '(unnamed)'} {p.get('port')}" for p in ports) or "none"
        return f"Service {namespace}/{service} has no port {port} (its ports: {have})"
