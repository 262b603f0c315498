"""The deployment and replica-set controllers and a stand-in kubelet, in one thread.

What a rollout (and ``kubectl rollout status/history/undo``) observes is reproduced:

* A pod-template change makes a new ReplicaSet named ``<deployment>-<pod-template-hash>``;
  an owned ReplicaSet whose template equals the Deployment's is *reused* and given the next
  revision number, which is how ``kubectl rollout undo`` ends up at a new revision.
  ``deployment.kubernetes.io/revision`` sits on the ReplicaSets and the Deployment, and the
  Deployment's annotations are copied to its new ReplicaSet (undo copies them back).
* Rolling update, simplified: the new ReplicaSet gets all desired replicas at once, old ones
  shrink as new pods become available, so capacity never drops (maxSurge 100%).
* Pods become Ready ``ready_delay`` wall seconds after creation unless their image is bad; a
  bad image stays in ImagePullBackOff forever. Once no progress has been made for
  ``spec.progressDeadlineSeconds`` (times ``time_scale`` wall seconds per second) the
  Deployment's Progressing condition turns False with reason ProgressDeadlineExceeded.
* ``revisionHistoryLimit`` prunes the oldest scaled-down ReplicaSets.
* HorizontalPodAutoscalers scale their Deployment on the load a test sets, counting the pods
  its selector picks and refusing pods two HPAs pick, as from 1.26 (``k8s_hpa``).
* PodDisruptionBudgets report the disruption controller's status over every pod their
  selector matches (eviction itself is not emulated).

* Scaling a ReplicaSet records a ``ScalingReplicaSet`` Event shaped as the real deployment
  controller's ("Scaled up replica set NAME to N", source ``deployment-controller``, named
  ``<deployment>.<hex nanoseconds>``, "(combined from similar events): " from the eleventh).
  As in v1.20, an exceeded progress deadline is a condition, not an Event.
* A container that starts writes one line to its log (``kubectl logs``).

Where the real control plane (tests/fixtures/backends.py runs the same tests on both)
still differs, and why that does not matter to a rollout:

* Rolling-update pacing: the real controller surges 25 % and keeps 75 % available; here the
  new ReplicaSet gets every replica at once. Both end rolled out with old capacity kept
  until new pods are available; only the number of steps (and events) differs.
* Pod deletion: real pods bound to a node linger terminating until the kubelet (the node
  agent) confirms; here they vanish at once. Rollout status counts neither.
* The real event recorder drops an object's events past a burst of 25 (refilled one per
  5 min); here every event is kept, so a rehearsal lists more of them.
* ``kubectl logs`` on the real control plane fails: there is no kubelet to stream from.
* Progress deadlines: the real clock is the wall clock (tests shorten the deadline to 2 s);
  here ``time_scale`` compresses it.

Reconciling is level-based: each pass reads everything and writes only differences, so a
pass after every write plus a ticker (for the timers) converges; an unchanged object is
never rewritten, so resourceVersions and watch streams stay quiet once settled.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from phasegate.rehearsal import k8s_hpa
from phasegate.rehearsal.k8s_store import ApiError, Obj, Store, label_selector, now_rfc3339, selector_string

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Annotations the deployment controller does not copy to ReplicaSets (and kubectl undo keeps).
NOT_COPIED = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED, MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
})
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
# The field managers a real cluster records for these writers.
CONTROLLER = "kube-controller-manager"
KUBELET = "kubelet"


def template_hash(template: Obj) -> str:
    """A stable 10-character hash of a pod template, ignoring the hash label itself."""
    t = copy.deepcopy(template)
    (t.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    digest = hashlib.sha256(json.dumps(t, sort_keys=True).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def revision(obj: Obj) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owner_ref(owner: Obj) -> Obj:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _scaled(value: int | str | None, total: int, *, round_up: bool) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    share = float(value.rstrip("%")) / 100 * total
    return math.ceil(share) if round_up else math.floor(share)


@dataclass
class Behaviour:
    """Knobs a test or rehearsal turns; changes apply on the next pass."""

    ready_delay: float = 0.1
    """Wall seconds from pod creation to Ready."""
    time_scale: float = 1.0
    """Wall seconds per Kubernetes second for spec durations (progressDeadlineSeconds)."""
    bad_images: set[str] = field(default_factory=set)
    """Images whose pods never become ready (ImagePullBackOff)."""
    image_is_bad: Callable[[str], bool] | None = None
    """Optional predicate, consulted in addition to ``bad_images``."""
    load: dict[str, float] = field(default_factory=dict)
    """CPU demanded per namespace, in pod-requests, spread over its Ready pods (k8s_hpa)."""
    hpa_period: float = 0.05
    """Wall seconds between two passes of one HPA (the real sync period is 15 s)."""

    def bad(self, image: str) -> bool:
        return image in self.bad_images or bool(self.image_is_bad and self.image_is_bad(image))


class Controller:
    """Runs reconcile passes on writes (``kick``) and on a ticker, in a daemon thread."""

    def __init__(self, store: Store, behaviour: Behaviour, tick: float = 0.02, idle_tick: float = 10.0) -> None:
        self.store, self.behaviour, self.tick, self.idle_tick = store, behaviour, tick, idle_tick
        # A pass covers the namespaces written since the last one, plus those where the clock
        # still has work (a pod short of Ready, a rollout before its progress deadline).
        # Nothing else can change, and every write kicks the loop: with a hundred targets a
        # pass over the whole cluster fifty times a second was most of the emulator's CPU.
        # Every idle_tick without a kick, a full pass is the safety net.
        self._pending: set[str] = set()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._born: dict[str, float] = {}  # pod uid → monotonic creation time
        self._progress: dict[str, tuple[tuple[object, ...], float]] = {}  # deployment uid → (signature, time)
        self._hpa_synced: dict[str, float] = {}  # namespace → monotonic time of its HPAs' last pass
        self._recommendations: dict[str, k8s_hpa.History] = {}  # HPA uid → what it recommended when
        self._similar_events: dict[tuple[str, str], int] = {}  # (object uid, reason) -> events recorded
        self._instant = False

    def kick(self) -> None:
        self._kick.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="k8s-emulator-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            kicked = self._kick.wait(self.tick if self._pending else self.idle_tick)
            self._kick.clear()
            try:
                with self.store.lock:
                    scope = self.store.take_dirty() | self._pending
                    if scope:
                        self.reconcile(scope)
                    elif not kicked:
                        self.reconcile()
            except Exception:  # a controller crash must not kill the emulator; the next pass retries
                log.exception("emulator controller pass failed")

    def settle(self, passes: int = 50) -> None:
        """Converge synchronously with pods Ready at once (seeding history without waiting)."""
        self._instant = True
        try:
            with self.store.lock:
                for _ in range(passes):
                    # Pods turn Ready within the pass here, so only writes can leave work.
                    scope = self.store.take_dirty()
                    if not scope:
                        return
                    self.reconcile(scope)
        finally:
            self._instant = False

    # -- one pass ------------------------------------------------------------------------

    def reconcile(self, namespaces: Iterable[str] | None = None) -> None:
        """One pass over ``namespaces`` (all of them when None)."""
        with self.store.lock:
            scope: list[str | None] = [None] if namespaces is None else list(sorted(namespaces))
            if namespaces is None:
                self._pending.clear()
            else:
                self._pending.difference_update(scope)
            for ns in scope:
                self._sync_autoscalers(self.store.list("autoscaling/horizontalpodautoscalers", ns))
                for d in self.store.list("apps/deployments", ns):
                    self._sync_deployment(d)
                for rs in self.store.list("apps/replicasets", ns):
                    self._sync_replicaset(rs)
                self._run_pods(ns)
                for rs in self.store.list("apps/replicasets", ns):
                    self._replicaset_status(rs)
                for d in self.store.list("apps/deployments", ns):
                    self._deployment_status(d)
                for pdb in self.store.list("policy/poddisruptionbudgets", ns):
                    self._disruption_status(pdb)

    def _sync_autoscalers(self, hpas: list[Obj]) -> None:
        """One pass of the autoscalers, a namespace at a time on one clock and one snapshot of
        its pods. The real controller's resync enqueues every HPA each period against one
        metrics snapshot; a clock per HPA let a canary's HPA miss the pass in which stable's
        did scale, then read the load already spread over stable's new pods and stay small."""
        by_namespace: dict[str, list[Obj]] = {}
        for hpa in hpas:
            by_namespace.setdefault(hpa["metadata"]["namespace"], []).append(hpa)
        now = time.monotonic()
        for ns, group in by_namespace.items():
            self._pending.add(ns)  # the load can change without a write: keep looking
            if now - self._hpa_synced.get(ns, -math.inf) < self.behaviour.hpa_period:
                continue
            self._hpa_synced[ns] = now
            pods = [p for p in self.store.list("pods", ns) if not p["metadata"].get("deletionTimestamp")]
            ready_in_namespace = sum(_ready(p) for p in pods)
            load = self.behaviour.load.get(ns)
            utilization = 100.0 * load / ready_in_namespace if load is not None and ready_in_namespace else None
            targets: dict[str, Obj | None] = {}
            picked: dict[str, list[Obj]] = {}  # HPA name → the pods its target's selector picks
            for hpa in group:
                name, ref = hpa["metadata"]["name"], hpa["spec"].get("scaleTargetRef") or {}
                target = self.store.find("apps/deployments", ns, ref.get("name", "")) \
                    if ref.get("kind") == "Deployment" else None
                targets[name] = target
                if target is not None:
                    match = label_selector(selector_string(target["spec"].get("selector")))
                    picked[name] = [p for p in pods if match(p["metadata"].get("labels") or {})]
            owners: dict[str, set[str]] = {}  # pod name → the HPAs whose selector picks it
            for name, selected in picked.items():
                for pod in selected:
                    owners.setdefault(pod["metadata"]["name"], set()).add(name)
            for hpa in group:
                name = hpa["metadata"]["name"]
                selected = picked.get(name, [])
                sharing = sorted(set().union(*(owners[p["metadata"]["name"]] for p in selected))) if selected else []
                ambiguous = None
                if len(sharing) > 1:
                    target = targets[name]
                    assert target is not None
                    ambiguous = (f"pods by selector {selector_string(target['spec'].get('selector'))} are controlled "
                                 f"by multiple HPAs: [{' '.join(f'{ns}/{n}' for n in sharing)}]")
                ready = sum(_ready(p) for p in selected)
                self._sync_autoscaler(hpa, targets[name], ready, len(selected) - ready, utilization, ambiguous)

    def _sync_autoscaler(self, hpa: Obj, target: Obj | None, ready: int, unready: int, utilization: float | None,
                         ambiguous: str | None) -> None:
        ns = hpa["metadata"]["namespace"]

        def scale(replicas: int) -> None:
            assert target is not None
            self.store.mutate("apps/deployments", ns, target["metadata"]["name"],
                              lambda o: {**o, "spec": {**o["spec"], "replicas": replicas}},
                              subresource="scale", manager=CONTROLLER)

        def write_status(status: Obj) -> None:
            self.store.update("autoscaling/horizontalpodautoscalers", ns, hpa["metadata"]["name"],
                              {**hpa, "status": status}, subresource="status", manager=CONTROLLER)

        def stabilize(current: int, desired: int) -> int:
            uid = hpa["metadata"]["uid"]
            at = time.monotonic() / max(self.behaviour.time_scale, 1e-9)  # in Kubernetes seconds
            wanted, self._recommendations[uid] = k8s_hpa.stabilized(
                hpa["spec"], current, desired, self._recommendations.get(uid, []), at)
            return wanted

        if k8s_hpa.sync(hpa, target, ready, unready, utilization, ambiguous=ambiguous, scale=scale,
                        write_status=write_status, now=now_rfc3339(), stabilize=stabilize):
            assert ambiguous is not None
            self._event(hpa, "AmbiguousSelector", ambiguous, "Warning", kind="HorizontalPodAutoscaler",
                        api_version="autoscaling/v2", component="horizontal-pod-autoscaler")

    def _disruption_status(self, pdb: Obj) -> None:
        """What the disruption controller reports: the budget counts every pod the selector
        matches, whichever Deployment owns it (a canary's pods too, selectors overlapping)."""
        spec = pdb.get("spec") or {}
        pods = self.store.list("pods", pdb["metadata"]["namespace"], labels=selector_string(spec.get("selector")))
        expected, healthy = len(pods), sum(_ready(p) for p in pods)
        if "minAvailable" in spec:
            desired = _scaled(spec["minAvailable"], expected, round_up=True)
        else:
            desired = expected - _scaled(spec.get("maxUnavailable", 0), expected, round_up=True)
        status = {"observedGeneration": pdb["metadata"].get("generation", 1), "expectedPods": expected,
                  "currentHealthy": healthy, "desiredHealthy": max(desired, 0),
                  "disruptionsAllowed": max(0, healthy - max(desired, 0))}
        if {k: v for k, v in (pdb.get("status") or {}).items() if k in status} != status:
            self.store.update("policy/poddisruptionbudgets", pdb["metadata"]["namespace"], pdb["metadata"]["name"],
                              {**pdb, "status": status}, subresource="status", manager=CONTROLLER)

    def _owned(self, kind_key: str, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.list(kind_key, owner["metadata"]["namespace"]) if controller_uid(o) == uid]

    def _sync_deployment(self, d: Obj) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        spec = d["spec"]
        desired = spec["replicas"]
        owned = self._owned("apps/replicasets", d)
        h = template_hash(spec["template"])
        new = next((rs for rs in owned if template_hash(rs["spec"]["template"]) == h), None)
        top = max((revision(rs) for rs in owned), default=0)
        copied = {k: v for k, v in (d["metadata"].get("annotations") or {}).items() if k not in NOT_COPIED}
        max_surge = _scaled((spec["strategy"].get("rollingUpdate") or {}).get("maxSurge"), desired, round_up=True)
        if new is None:
            rev = top + 1
            template = copy.deepcopy(spec["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})[HASH_LABEL] = h
            new = self.store.create("apps/replicasets", ns, {
                "metadata": {
                    "name": f"{name}-{h}", "labels": dict(template["metadata"]["labels"]),
                    "annotations": {**copied, REVISION: str(rev), DESIRED: str(desired),
                                    MAX_REPLICAS: str(desired + max_surge)},
                    "ownerReferences": [owner_ref(d)],
                },
                "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds", 0),
                         "selector": selector, "template": template},
            }, manager=CONTROLLER)
            owned.append(new)
        else:
            rev = max(top + 1, revision(new)) if revision(new) < top else revision(new)
            annotations = {**{k: v for k, v in (new["metadata"].get("annotations") or {}).items()
                              if k in NOT_COPIED}, **copied, REVISION: str(rev), DESIRED: str(desired),
                           MAX_REPLICAS: str(desired + max_surge)}
            if revision(new) != rev:
                earlier = [x for x in annotations.get(REVISION_HISTORY, "").split(",") if x]
                annotations[REVISION_HISTORY] = ",".join([*earlier, str(revision(new))])
            if annotations != new["metadata"].get("annotations"):
                new["metadata"]["annotations"] = annotations
                new = self.store.update("apps/replicasets", ns, new["metadata"]["name"], new,
                                        manager=CONTROLLER)
        if (d["metadata"].get("annotations") or {}).get(REVISION) != str(rev):
            self.store.mutate("apps/deployments", ns, name, lambda o: _annotate(o, REVISION, str(rev)),
                              manager=CONTROLLER)

        self._scale(new, desired, d)
        old = sorted((rs for rs in owned if rs["metadata"]["uid"] != new["metadata"]["uid"]), key=revision)
        if spec["strategy"].get("type") == "Recreate":
            room = 0
        else:
            room = max(0, desired - (new.get("status") or {}).get("availableReplicas", 0))
        # Newest old ReplicaSets keep their pods longest, as the real controller scales down oldest first.
        for rs in reversed(old):
            keep = min(rs["spec"]["replicas"], room)
            room -= keep
            self._scale(rs, keep, d)
        limit = spec.get("revisionHistoryLimit", 10)
        idle = [rs for rs in old if rs["spec"]["replicas"] == 0 and not (rs.get("status") or {}).get("replicas")]
        for rs in idle[: max(0, len(idle) - limit)]:
            self.store.delete("apps/replicasets", ns, rs["metadata"]["name"])

    def _scale(self, rs: Obj, replicas: int, d: Obj) -> None:
        before = rs["spec"]["replicas"]
        if before != replicas:
            self.store.mutate("apps/replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"],
                              lambda o: {**o, "spec": {**o["spec"], "replicas": replicas}}, manager=CONTROLLER)
            direction = "up" if replicas > before else "down"
            self._event(d, "ScalingReplicaSet",
                        f"Scaled {direction} replica set {rs['metadata']['name']} to {replicas}")

    def _event(self, d: Obj, reason: str, message: str, event_type: str = "Normal", *, kind: str = "Deployment",
               api_version: str = "apps/v1", component: str = "deployment-controller") -> None:
        """A core/v1 Event as the real controllers record it (name, source, fields)."""
        meta, stamp = d["metadata"], now_rfc3339()
        # client-go's event aggregator: from the eleventh similar event of an object on, the
        # message says it stands for several.
        seen = self._similar_events[(meta["uid"], reason)] = self._similar_events.get((meta["uid"], reason), 0) + 1
        if seen > 10:
            message = f"(combined from similar events): {message}"
        with contextlib.suppress(ApiError):  # the namespace is being deleted: no one will read it
            self.store.create("events", meta["namespace"], manager=CONTROLLER, obj={
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}"},
                "involvedObject": {"kind": kind, "namespace": meta["namespace"], "name": meta["name"],
                                   "uid": meta["uid"], "apiVersion": api_version,
                                   "resourceVersion": meta.get("resourceVersion", "")},
                "reason": reason, "message": message, "source": {"component": component},
                "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "type": event_type,
                "eventTime": None, "reportingComponent": "", "reportingInstance": ""})

    def _sync_replicaset(self, rs: Obj) -> None:
        ns = rs["metadata"]["namespace"]
        pods = self._owned("pods", rs)
        want = rs["spec"]["replicas"]
        template = rs["spec"]["template"]
        for _ in range(want - len(pods)):
            # generateName, as the ReplicaSet controller does: the apiserver adds the suffix.
            pod = self.store.create("pods", ns, {
                "metadata": {"generateName": f"{rs['metadata']['name']}-",
                             "labels": dict(template["metadata"].get("labels") or {}),
                             "annotations": dict(template["metadata"].get("annotations") or {}),
                             "ownerReferences": [owner_ref(rs)]},
                "spec": {**copy.deepcopy(template["spec"]), "nodeName": "emulator-node"},
                "status": {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]},
            }, manager=CONTROLLER)
            self._born[pod["metadata"]["uid"]] = time.monotonic()
        if len(pods) > want:
            # Not-ready pods go first, then the youngest: what the ReplicaSet controller prefers.
            pods.sort(key=lambda p: (_ready(p), p["metadata"]["creationTimestamp"]))
            for pod in pods[: len(pods) - want]:
                self.store.delete("pods", ns, pod["metadata"]["name"])
                self._born.pop(pod["metadata"]["uid"], None)
                for c in pod["spec"].get("containers") or []:
                    self.store.logs.pop((ns, pod["metadata"]["name"], c["name"]), None)

    def _run_pods(self, namespace: str | None) -> None:
        now = time.monotonic()
        for pod in self.store.list("pods", namespace):
            if _ready(pod):
                continue
            self._pending.add(pod["metadata"]["namespace"])
            born = self._born.setdefault(pod["metadata"]["uid"], now)
            containers = pod["spec"].get("containers") or []
            bad = [c for c in containers if self.behaviour.bad(c.get("image", ""))]
            stamp = now_rfc3339()
            if bad:
                statuses = [{"name": c["name"], "image": c.get("image", ""), "ready": False, "restartCount": 0,
                             "started": False,
                             "state": {"waiting": {"reason": "ImagePullBackOff",
                                                   "message": f'Back-off pulling image "{c.get("image")}"'}}
                             if c in bad else {"running": {"startedAt": stamp}}} for c in containers]
                if [s["state"].keys() for s in pod["status"].get("containerStatuses") or []] != \
                        [s["state"].keys() for s in statuses]:
                    pod["status"]["containerStatuses"] = statuses
                    self.store.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], pod,
                                      manager=KUBELET)
                continue
            if self._instant or now - born >= self.behaviour.ready_delay:
                pod["status"] = {
                    "phase": "Running", "podIP": f"10.244.0.{sum(map(ord, pod['metadata']['uid'])) % 250 + 2}",
                    "startTime": stamp,
                    "conditions": [{"type": t, "status": "True", "lastTransitionTime": stamp}
                                   for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                    "containerStatuses": [
                        {"name": c["name"], "image": c.get("image", ""), "ready": True, "restartCount": 0,
                         "started": True, "state": {"running": {"startedAt": stamp}}} for c in containers],
                }
                self.store.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], pod, manager=KUBELET)
                for c in containers:
                    ports = ",".join(str(p["containerPort"]) for p in c.get("ports") or [])
                    self.store.logs.setdefault((pod["metadata"]["namespace"], pod["metadata"]["name"], c["name"]),
                                               []).append(f"{stamp} started {c.get('image', '')}"
                                                          + (f", listening on :{ports}" if ports else ""))

    def _replicaset_status(self, rs: Obj) -> None:
        pods = self._owned("pods", rs)
        ready = sum(_ready(p) for p in pods)
        status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"]}
        if rs.get("status") != status:
            rs["status"] = status
            self.store.update("apps/replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"], rs,
                              subresource="status", manager=CONTROLLER)

    def _deployment_status(self, d: Obj) -> None:
        ns, uid = d["metadata"]["namespace"], d["metadata"]["uid"]
        desired = d["spec"]["replicas"]
        owned = self._owned("apps/replicasets", d)
        h = template_hash(d["spec"]["template"])
        new = next((rs for rs in owned if template_hash(rs["spec"]["template"]) == h), None)
        if new is None:
            return
        counts = {k: sum((rs.get("status") or {}).get(k, 0) for rs in owned)
                  for k in ("replicas", "readyReplicas", "availableReplicas")}
        updated = (new.get("status") or {}).get("replicas", 0)
        signature = (d["metadata"]["generation"], new["metadata"]["name"], updated, *counts.values())
        now = time.monotonic()
        if self._progress.get(uid, ((), 0.0))[0] != signature:
            self._progress[uid] = (signature, now)
        since = now - self._progress[uid][1]
        complete = (updated == desired and counts["replicas"] == desired and counts["availableReplicas"] == desired)
        rs_name = new["metadata"]["name"]
        deadline = d["spec"].get("progressDeadlineSeconds", 600) * self.behaviour.time_scale
        if not complete:
            self._pending.add(ns)
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif since > deadline:
            progressing = ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.')
        else:
            progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        strategy = d["spec"].get("strategy") or {}
        max_unavailable = _scaled((strategy.get("rollingUpdate") or {}).get("maxUnavailable"), desired,
                                  round_up=False)
        available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") \
            if counts["availableReplicas"] >= desired - max_unavailable else \
            ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        old_conditions = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}
        status: Obj = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": counts["replicas"], "updatedReplicas": updated,
            "readyReplicas": counts["readyReplicas"], "availableReplicas": counts["availableReplicas"],
            "conditions": [_condition(old_conditions.get("Available"), "Available", *available),
                           _condition(old_conditions.get("Progressing"), "Progressing", *progressing)],
        }
        if desired - counts["availableReplicas"] > 0:
            status["unavailableReplicas"] = desired - counts["availableReplicas"]
        if d.get("status") != status:
            d["status"] = status
            try:
                self.store.update("apps/deployments", ns, d["metadata"]["name"], d, subresource="status",
                                  manager=CONTROLLER)
            except ApiError as exc:
                if exc.code != 404:
                    raise


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _annotate(obj: Obj, key: str, value: str) -> Obj:
    obj["metadata"].setdefault("annotations", {})[key] = value
    return obj


def _condition(old: Obj | None, kind: str, status: str, reason: str, message: str) -> Obj:
    stamp = now_rfc3339()
    if old and (old["status"], old["reason"], old["message"]) == (status, reason, message):
        return old
    transition = old["lastTransitionTime"] if old and old["status"] == status else stamp
    return {"type": kind, "status": status, "lastUpdateTime": stamp, "lastTransitionTime": transition,
            "reason": reason, "message": message}
