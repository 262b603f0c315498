"""A KWOK-style node agent: the scheduler and kubelet the loopback control plane lacks.

With no kubelet or scheduler every pod the ReplicaSet controller creates would stay
Pending. The agent does what those two would have written to the API, and nothing else:

* registers a fake Node (``Ready``, roomy capacity) and renews its Lease in
  ``kube-node-lease`` every 10 s, so the node lifecycle controller never marks it
  unreachable and never evicts its pods;
* binds each unscheduled pod to that Node through the ``binding`` subresource, as the
  scheduler does;
* ``ready_delay`` seconds later writes the pod status subresource as a kubelet would after
  pulling and starting the containers: Running, Ready, a pod IP, one running status per
  container — unless a container's image is *held*, in which case the pod stays Pending
  with that container in ImagePullBackOff, for ever (a bad image);
* finishes graceful deletion (``deletionTimestamp`` set) with a zero-grace delete, as a
  kubelet does once the containers have stopped.

Everything else — pod names, ReplicaSet revisions, rolling-update pacing, availability,
the progress deadline — is the real controllers' doing. One thread watches all pods (list,
then watch from that resourceVersion, relisting when the watch expires); another does the
writes from a timer heap, so a slow write never delays the watch.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import threading
import time
from datetime import UTC, datetime
from types import TracebackType

from phasegate.rehearsal.controlplane import Credentials
from phasegate.rehearsal.kube_http import STRATEGIC, KubeApiError, KubeHttp, Obj

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
RENEW_EVERY = 10.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeAgent:
    """Binds pods to one fake Node and reports them Ready after ``ready_delay`` seconds."""

    def __init__(self, credentials: Credentials, *, node: str = "phasegate-node-0", ready_delay: float = 0.05) -> None:
        self.credentials = credentials
        self.node = node
        self.ready_delay = ready_delay
        self.held: set[tuple[str, str]] = set()  # (namespace, image)
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, str, Obj]] = []
        self._seq = itertools.count()
        self._seen: dict[str, set[str]] = {}  # pod uid -> steps already taken
        self._ips = itertools.count(2)
        self._threads: list[threading.Thread] = []
        self._watch_http: KubeHttp | None = None
        self.errors: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        http = KubeHttp(self.credentials)
        try:
            self._register(http)
        finally:
            http.close()
        self._watch_http = KubeHttp(self.credentials)
        pods = self._watch_http.get("/api/v1/pods")
        for pod in pods.get("items") or []:
            self._observe(pod)
        self._threads = [
            threading.Thread(target=self._watch_loop, args=(pods["metadata"]["resourceVersion"],),
                             name="node-agent-watch", daemon=True),
            threading.Thread(target=self._work_loop, name="node-agent-work", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._watch_http is not None:
            self._watch_http.close()  # ends the blocked watch read
        # The watch thread may sit in a read the closed client does not interrupt at once; it
        # is a daemon and ignores errors once stopping, so it is not waited for long.
        for t in self._threads:
            t.join(timeout=1)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def hold(self, namespace: str, image: str) -> None:
        """Pods of ``namespace`` running ``image`` never become ready (their pull backs off).
        Per namespace, so one test's bad image is not another's."""
        self.held.add((namespace, image))

    # -- node ------------------------------------------------------------------------------

    def _register(self, http: KubeHttp) -> None:
        with contextlib.suppress(KubeApiError):  # already registered by an earlier agent
            http.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": self.node, "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                                              "type": "phasegate-node-agent"}}})
        now = _now()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
        http.patch(f"/api/v1/nodes/{self.node}/status", {"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "phasegate://node-agent",
                         "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": ""},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "phasegate node agent is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }}, STRATEGIC)
        self._renew_lease(http)

    def _renew_lease(self, http: KubeHttp) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            http.patch(path, {"spec": spec})
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            http.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                      {"metadata": {"name": self.node}, "spec": spec})
        self._schedule(RENEW_EVERY, "lease", {})

    # -- pods ------------------------------------------------------------------------------

    def _schedule(self, delay: float, step: str, pod: Obj) -> None:
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), step, pod))
            self._lock.notify_all()

    def _once(self, pod: Obj, step: str) -> bool:
        uid = pod["metadata"]["uid"]
        done = self._seen.setdefault(uid, set())
        if step in done:
            return False
        done.add(step)
        return True

    def _observe(self, pod: Obj) -> None:
        """Decide what the scheduler or kubelet would do next with this pod."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if meta.get("deletionTimestamp"):
            if spec.get("nodeName") == self.node and self._once(pod, "delete"):
                self._schedule(0, "delete", pod)
        elif not spec.get("nodeName"):
            if self._once(pod, "bind"):
                self._schedule(0, "bind", pod)
        elif (spec["nodeName"] == self.node and (pod.get("status") or {}).get("phase") == "Pending"
              and self._once(pod, "start")):
            self._schedule(self.ready_delay, "start", pod)

    def _watch_loop(self, resource_version: str) -> None:
        http = self._watch_http
        assert http is not None
        while not self._stop.is_set():
            try:
                for event in http.watch("/api/v1/pods", resource_version):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise KubeApiError("WATCH", "/api/v1/pods", int(obj.get("code", 410)), obj)
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif event.get("type") == "DELETED":
                        self._seen.pop(obj["metadata"]["uid"], None)
            except Exception as exc:
                if self._stop.is_set():
                    return
                # 410 Gone (history compacted) or a dropped stream: list again and go on.
                log.debug("node agent watch restarts: %s", exc)
                try:
                    listing = http.get("/api/v1/pods")
                except Exception as list_exc:
                    self.errors.append(f"list pods: {list_exc}")
                    time.sleep(0.5)
                    continue
                for pod in listing.get("items") or []:
                    self._observe(pod)
                resource_version = listing["metadata"]["resourceVersion"]

    def _work_loop(self) -> None:
        http = KubeHttp(self.credentials)
        try:
            while not self._stop.is_set():
                with self._lock:
                    while not self._stop.is_set() and (not self._heap or self._heap[0][0] > time.monotonic()):
                        self._lock.wait(timeout=(self._heap[0][0] - time.monotonic()) if self._heap else None)
                    if self._stop.is_set():
                        return
                    _, _, step, pod = heapq.heappop(self._heap)
                try:
                    self._act(http, step, pod)
                except KubeApiError as exc:
                    if exc.status not in (404, 409):  # gone or changed meanwhile: the watch brings the news
                        self.errors.append(str(exc))
                except Exception as exc:  # keep serving the other pods; the error is reported
                    self.errors.append(f"{step}: {type(exc).__name__}: {exc}")
        finally:
            http.close()

    def _act(self, http: KubeHttp, step: str, pod: Obj) -> None:
        if step == "lease":
            self._renew_lease(http)
            return
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        if step == "bind":
            http.post(path + "/binding", {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                                          "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}})
        elif step == "delete":
            http.delete(path, {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": uid}})
        elif step == "start":
            http.patch(path + "/status", {"metadata": {"uid": uid}, "status": self._status(pod)}, STRATEGIC)

    def _status(self, pod: Obj) -> Obj:
        now = _now()
        containers = pod["spec"].get("containers") or []
        ns = pod["metadata"]["namespace"]
        held = [c["name"] for c in containers if (ns, c.get("image")) in self.held]
        statuses = []
        for c in containers:
            digest = hashlib.sha256(f"{pod['metadata']['uid']}/{c['name']}".encode()).hexdigest()
            base = {"name": c["name"], "image": c.get("image", ""), "restartCount": 0}
            if c["name"] in held:
                statuses.append({**base, "ready": False, "started": False, "imageID": "", "state": {"waiting": {
                    "reason": "ImagePullBackOff", "message": f"Back-off pulling image \"{c.get('image', '')}\""}}})
            else:
                statuses.append({**base, "ready": not held, "started": True,
                                 "imageID": f"docker-pullable://{c.get('image', '')}",
                                 "containerID": f"containerd://{digest}", "state": {"running": {"startedAt": now}}})
        n = next(self._ips)
        ip = f"10.244.{n // 250 % 250}.{n % 250 + 2}"
        ready = "False" if held else "True"
        unready = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{' '.join(held)}]"}
        conditions = [{"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": now}]
        for kind in ("Ready", "ContainersReady"):
            conditions.append({"type": kind, "status": ready, "lastProbeTime": None, "lastTransitionTime": now,
                               **(unready if held else {})})
        return {"phase": "Pending" if held else "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
                "startTime": now, "conditions": conditions, "containerStatuses": statuses}
