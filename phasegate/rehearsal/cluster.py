"""A loopback Kubernetes API emulator that kubectl and the official Python client accept.

No kube-apiserver can run where rehearsals and tests run, yet every rollout flow needs a
cluster whose behaviour is Kubernetes' own: ReplicaSet revisions for ``rollout undo``,
strategic merge patches that keep sidecars, 409 on stale writes, progress deadlines. So the
emulator implements those semantics and nothing more, and it is checked against the real
``kubectl`` binary (tests/e2e/test_kubectl.py), not only against our own adapter.

Pieces, one module each:

* ``k8s_store``      objects, resourceVersions, generations, selectors, the watch log
* ``k8s_patch``      strategic merge, JSON merge and JSON patch
* ``k8s_controller`` deployment / replica-set controllers and pod readiness
* ``k8s_api``        the REST surface (Starlette), fault injection, RBAC denials

``ClusterEmulator`` wires them together and serves the app with uvicorn from a background
thread on a socket it binds itself (127.0.0.1, port 0 unless told), so there is no
free-port race and start-up takes a few tens of milliseconds. ``seed`` creates the rollout
target the seed plan describes; ``serve_emulator`` is the foreground command behind
``phasegate emulator``.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from phasegate.rehearsal.k8s_api import ApiServer, Faults, LoggedRequest, Rbac
from phasegate.rehearsal.k8s_controller import Behaviour, Controller
from phasegate.rehearsal.k8s_store import Obj, Store
from phasegate.rehearsal.kube_http import STRATEGIC, KubeHttp

SEED_NAMESPACES = ("bodhi", "bodhi-staging")
SEED_DEPLOYMENT = "bodhi-server"
SEED_CONTAINER = "bodhi-server"
SEED_CONFIGMAP = "bodhi-config"
SEED_FLAG_KEY = "enable_token_refresh_locking"
SEED_ENV_FLAG = "ENABLE_TOKEN_REFRESH_LOCKING"
SEED_IMAGE_REPO = "registry.example.com/bodhi/bodhi-server"
SEED_HISTORY = ("1.4.0", "1.4.1", "1.5.0")
SIDECAR = "metrics-proxy"
# The seed's history is written as a team's `kubectl apply` would be.
SEED_MANAGER = "kubectl-client-side-apply"


class _Server(uvicorn.Server):
    """uvicorn checks ``should_exit`` every 100 ms; tests start and stop an emulator each,
    so it checks every 10 ms (signals are not ours to catch: we run off the main thread)."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


class ClusterEmulator:
    """The emulated cluster: store, controller and HTTP server. Use as a context manager."""

    def __init__(self, *, ready_delay: float = 0.1, time_scale: float = 1.0, tick: float = 0.02,
                 port: int = 0) -> None:
        self.behaviour = Behaviour(ready_delay=ready_delay, time_scale=time_scale)
        self.store = Store()
        self.controller = Controller(self.store, self.behaviour, tick=tick)
        self.store.on_write = self.controller.kick
        self.faults = Faults()
        self.rbac = Rbac()
        self.api = ApiServer(self.store, faults=self.faults, rbac=self.rbac)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.store.create("namespaces", None, {"metadata": {"name": "default"}})

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("emulator not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every HTTP request served, in order."""
        return self.api.requests

    def start(self) -> ClusterEmulator:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it uvicorn's separate header and body writes
        # meet the client's delayed ACK and every request takes 40 ms instead of <1 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(128)
        self._socket = sock
        self.api.address = self.url.removeprefix("http://")
        config = uvicorn.Config(self.api.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, timeout_keep_alive=30)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="k8s-emulator-http", daemon=True)
        self._thread.start()
        self.controller.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("cluster emulator failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.api.closing.set()
        self.controller.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def __enter__(self) -> ClusterEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers for tests and rehearsals --------------------------------------------------

    def kubeconfig(self, *, context: str = "emulator", namespace: str = "default") -> Obj:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": context, "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "emulator"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                       "namespace": namespace}}],
        }

    def write_kubeconfig(self, path: str | Path, *, context: str = "emulator",
                         namespace: str = "default") -> Path:
        """A kubeconfig for kubectl (``--kubeconfig``) and ``kubernetes.config.load_kube_config``."""
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML, and both kubectl and the Python client read it. Written to a
        # sibling and renamed: whoever polls for the file must never read it half-written.
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.kubeconfig(context=context, namespace=namespace), indent=2))
        partial.replace(path)
        return path

    def deployment(self, namespace: str, name: str) -> Obj:
        return self.store.get("apps/deployments", namespace, name)

    def rolled_out(self, namespace: str, name: str) -> bool:
        d = self.store.find("apps/deployments", namespace, name)
        return d is not None and rolled_out(d)

    def wait_rolled_out(self, namespace: str, name: str, timeout: float = 5.0) -> Obj:
        """In-process wait (no HTTP), for fixtures and assertions."""
        deadline = time.monotonic() + timeout
        while not self.rolled_out(namespace, name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace}/{name} not rolled out after {timeout}s")
            time.sleep(0.01)
        return self.deployment(namespace, name)

    def pods(self, namespace: str, selector: str | None = None) -> list[Obj]:
        return self.store.list("pods", namespace, labels=selector)


def rolled_out(d: Obj) -> bool:
    """What ``kubectl rollout status`` waits for: every desired replica updated and available."""
    status, desired = d.get("status") or {}, d["spec"]["replicas"]
    return (status.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == desired == status.get("replicas", 0)
            and status.get("availableReplicas", 0) == desired)


def _deployment(name: str, container: str, image: str, replicas: int, env_flag: str, configmap: str) -> Obj:
    # No track label: a stock Deployment has none, and phasegate never restarts stable pods to add one.
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name},
                     "annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "containers": [
                        {"name": container, "image": image,
                         "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                         "env": [{"name": env_flag, "value": "true"},
                                 {"name": "LOG_LEVEL", "value": "info"},
                                 {"name": "KEYCLOAK_URL", "value": "https://keycloak.example.com/realms/bodhi"}],
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/bodhi"}],
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}},
                        {"name": SIDECAR, "image": "registry.example.com/observability/metrics-proxy:2.3.1",
                         "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                         "env": [{"name": "UPSTREAM", "value": "http://127.0.0.1:8080"}]},
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": configmap}}],
                },
            },
        },
    }


def seed(emulator: ClusterEmulator, *, namespaces: tuple[str, ...] = SEED_NAMESPACES,
         deployment: str = SEED_DEPLOYMENT, container: str = SEED_CONTAINER, configmap: str = SEED_CONFIGMAP,
         flag_key: str = SEED_FLAG_KEY, env_flag: str = SEED_ENV_FLAG, image_repo: str = SEED_IMAGE_REPO,
         history: tuple[str, ...] = SEED_HISTORY, replicas: dict[str, int] | None = None) -> None:
    """Create the rollout target in each namespace with ``len(history)`` revisions, rolled out.

    Production gets 10 replicas (so a 10% canary is one pod), other namespaces 2, unless
    ``replicas`` says otherwise. The last tag of ``history`` is the running stable image.
    """
    store = emulator.store
    for ns in namespaces:
        count = (replicas or {}).get(ns, 10 if ns == namespaces[0] else 2)
        store.create("namespaces", None, {"metadata": {"name": ns}}, manager=SEED_MANAGER)
        store.create("configmaps", ns, {"metadata": {"name": configmap, "labels": {"app": deployment}},
                                        "data": {flag_key: "true", "log_level": "info"}}, manager=SEED_MANAGER)
        store.create("services", ns, {"metadata": {"name": deployment, "labels": {"app": deployment}},
                                      "spec": {"selector": {"app": deployment},
                                               "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}},
                     manager=SEED_MANAGER)
        for n, tag in enumerate(history):
            image = f"{image_repo}:{tag}"
            if n == 0:
                store.create("apps/deployments", ns, _deployment(deployment, container, image, count, env_flag,
                                                                 configmap), manager=SEED_MANAGER)
            else:
                store.mutate("apps/deployments", ns, deployment, functools.partial(_with_image, container=container,
                                                                                    image=image), manager=SEED_MANAGER)
            emulator.controller.settle()


def seed_over_api(http: KubeHttp, *, namespaces: tuple[str, ...] = SEED_NAMESPACES,
                  deployment: str = SEED_DEPLOYMENT, container: str = SEED_CONTAINER,
                  configmap: str = SEED_CONFIGMAP, flag_key: str = SEED_FLAG_KEY, env_flag: str = SEED_ENV_FLAG,
                  image_repo: str = SEED_IMAGE_REPO, history: tuple[str, ...] = SEED_HISTORY,
                  replicas: dict[str, int] | None = None, timeout: float = 60.0) -> None:
    """``seed``'s target, written through a real apiserver whose controllers make the history.

    Each later image is set once the previous one rolled out, in every namespace side by side:
    a rollout over two older ReplicaSets at once takes the real controller several times
    longer than two rollouts one after the other. A namespace's pods are admitted only once
    its ``default`` ServiceAccount has a token, so that is waited for first.
    """
    def wait(what: str, done: Callable[[str], bool], ns: str) -> None:
        deadline = time.monotonic() + timeout
        while not done(ns):
            if time.monotonic() > deadline:
                raise TimeoutError(f"seeding: {what} after {timeout:.0f}s")
            time.sleep(0.02)

    def get(ns: str) -> Obj:
        return http.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{deployment}")

    for ns in namespaces:
        http.post("/api/v1/namespaces", {"metadata": {"name": ns}})
    for ns in namespaces:
        wait(f"no token for {ns}/default", lambda ns: bool(
            (http.find(f"/api/v1/namespaces/{ns}/serviceaccounts/default") or {}).get("secrets")), ns)
        http.post(f"/api/v1/namespaces/{ns}/configmaps", {
            "metadata": {"name": configmap, "labels": {"app": deployment}},
            "data": {flag_key: "true", "log_level": "info"}})
        http.post(f"/api/v1/namespaces/{ns}/services", {
            "metadata": {"name": deployment, "labels": {"app": deployment}},
            "spec": {"selector": {"app": deployment}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}})
        count = (replicas or {}).get(ns, 10 if ns == namespaces[0] else 2)
        http.post(f"/apis/apps/v1/namespaces/{ns}/deployments",
                  _deployment(deployment, container, f"{image_repo}:{history[0]}", count, env_flag, configmap))
    for tag in history[1:]:
        image = f"{image_repo}:{tag}"
        for ns in namespaces:
            wait(f"{ns}/{deployment} not rolled out", lambda ns: rolled_out(get(ns)), ns)
            http.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/{deployment}", {
                "metadata": {"annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
                "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}, STRATEGIC)
    for ns in namespaces:
        wait(f"{ns}/{deployment} not rolled out", lambda ns: rolled_out(get(ns)), ns)
        # Old pods linger, terminating, until the node agent finishes their deletion.
        wait(f"old pods of {ns}/{deployment} still terminating", lambda ns: len(
            http.get(f"/api/v1/namespaces/{ns}/pods").get("items") or []) == get(ns)["spec"]["replicas"], ns)


def _with_image(d: Obj, container: str, image: str) -> Obj:
    for c in d["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            c["image"] = image
    d["metadata"]["annotations"]["kubernetes.io/change-cause"] = f"deploy {image}"
    return d


def serve_emulator(plan_path: str | None, port: int, kubeconfig: str | None, *,
                   namespaces: tuple[str, ...] = SEED_NAMESPACES, deployment: str = SEED_DEPLOYMENT,
                   container: str = SEED_CONTAINER, configmap: str = SEED_CONFIGMAP,
                   flag_key: str = SEED_FLAG_KEY, env_flag: str = SEED_ENV_FLAG, image_repo: str = SEED_IMAGE_REPO,
                   replicas: dict[str, int] | None = None, ready_delay: float = 1.0) -> None:
    """Serve a seeded emulator in the foreground until SIGINT or SIGTERM.

    ``plan_path`` is only named in the banner: the caller (the CLI) reads the plan and passes
    the target's names, so this module stays independent of the plan model. Without
    ``kubeconfig`` it goes to a fresh temporary directory, removed on exit, never into the
    current directory (where it would be committed by accident or clobber another one).
    """
    stop = threading.Event()
    scratch = None if kubeconfig else tempfile.mkdtemp(prefix="phasegate-emulator-")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ClusterEmulator(port=port, ready_delay=ready_delay) as emulator:
            seed(emulator, namespaces=namespaces, deployment=deployment, container=container,
                 configmap=configmap, flag_key=flag_key, env_flag=env_flag, image_repo=image_repo, replicas=replicas)
            path = emulator.write_kubeconfig(kubeconfig or Path(scratch or ".") / "kubeconfig",
                                             namespace=namespaces[0])
            print(f"Kubernetes API emulator at {emulator.url}" + (f" for plan {plan_path}" if plan_path else ""),
                  flush=True)
            print(f"kubeconfig: {path}   try: kubectl --kubeconfig {path} get deploy,rs,cm", flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
