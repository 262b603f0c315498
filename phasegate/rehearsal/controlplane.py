"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The emulator was written by the people who wrote the adapter, so the two can share a
misunderstanding; this is the cross-check. It runs Kubernetes' own code (v1.20.2, built
from Debian's source package by ``deployments/controlplane/build.sh``; etcd from Debian's
``etcd-server``) with no kubelet or scheduler: ``node_agent.NodeAgent`` binds pods to a fake
Node and writes their status, as KWOK does, and the real Deployment and ReplicaSet
controllers do the rest — pods are named by the real ReplicaSet controller.

Design decisions:

* Loopback only, ports picked free, the insecure ports of 1.20 (8080, 10252) switched off.
  TLS from a throwaway openssl CA, as a kubeconfig expects; authentication by a static
  token file (the test and agent identities) so nothing needs a certificate per user.
* ``--authorization-mode=RBAC`` and nothing else: a request the Role does not allow is
  denied by the real authorizer. Each identity is a separate token, so the audit log
  (``--audit-log-path``, requests of the ``admin`` user only) is the list of requests the
  code under test made — what the emulator's request log is for the emulator.
* The controller manager authenticates as ``system:kube-controller-manager`` and runs each
  controller under its own service account (``--use-service-account-credentials``), as
  kubeadm sets it up, with ``--leader-elect=false``; the service-account key pair also
  signs the tokens ``TokenRequest`` issues for a ServiceAccount.
* ``--endpoint-reconciler-type=none``: the ``kubernetes`` Service's endpoints would name
  127.0.0.1, which the apiserver refuses as an endpoint address.
* The controller manager's client is allowed 500 requests/s (default 20): a test session
  rolls out hundreds of pods in seconds, and at 20/s each rolling update took ~3 s of
  client-side throttling rather than of controller work.
* etcd keeps its data in the work directory with ``--unsafe-no-fsync``: the cluster lives
  as long as the test session, and fsync on a shared 2-core machine costs seconds.
* Stopped by PID (TERM, then KILL); the work directory (logs, certificates) is removed on
  a clean stop and kept, with its path printed, when start-up failed or ``keep`` is set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

K8S_VERSION = "v1.20.2"
DEFAULT_CACHE = Path("/var/cache/phasegate") / f"kubernetes-{K8S_VERSION}"
BUILD_SCRIPT = "deployments/controlplane/build.sh"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# User names in the token file. ADMIN is the identity whose requests the audit log keeps.
ADMIN = "admin"
OBSERVER = "observer"
NODE_AGENT = "phasegate-node-agent"
CONTROLLER_MANAGER = "system:kube-controller-manager"

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [ADMIN]}, {"level": "None"}],
}


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message names the log to read."""


def cache_dir() -> Path:
    return Path(os.environ.get("PHASEGATE_K8S_CACHE") or DEFAULT_CACHE)


def binaries() -> dict[str, Path]:
    """Paths of the three binaries, or ``ControlPlaneError`` naming what to run to get them."""
    bin_dir = cache_dir() / "bin"
    found = {"kube-apiserver": bin_dir / "kube-apiserver",
             "kube-controller-manager": bin_dir / "kube-controller-manager"}
    missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
    etcd = shutil.which("etcd")
    if etcd is None:
        missing.append("etcd (Debian package etcd-server)")
    if missing:
        raise ControlPlaneError(f"missing {', '.join(missing)}: run `make k8s` ({BUILD_SCRIPT})")
    found["etcd"] = Path(etcd)  # type: ignore[arg-type]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Credentials:
    """Where to reach the apiserver and as whom; never printed (tokens are secrets)."""

    server: str
    ca_file: Path
    token: str


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback. Use as a context manager."""

    def __init__(self, *, workdir: Path | None = None, keep: bool = False, ready_timeout: float = 60.0) -> None:
        self._given_workdir = workdir
        self.keep = keep
        self.ready_timeout = ready_timeout
        self.workdir: Path | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: dict[str, str] = {}
        self.apiserver_port = 0
        self.start_seconds = 0.0
        self._failed = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self._dir / "pki" / "ca.crt"

    @property
    def audit_log(self) -> Path:
        return self._dir / "logs" / "audit.jsonl"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        return self.workdir

    def credentials(self, user: str = ADMIN) -> Credentials:
        return Credentials(self.server, self.ca_file, self.tokens[user])

    def start(self) -> ControlPlane:
        started = time.monotonic()
        bins = binaries()
        self.workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="phasegate-k8s-"))
        for sub in ("pki", "logs", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._write_pki()
            self._write_tokens()
            self._start_etcd(bins["etcd"])
            self._start_apiserver(bins["kube-apiserver"])
            self._start_controller_manager(bins["kube-controller-manager"])
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(list(self.processes.values())):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.workdir is not None and self._given_workdir is None:
            if self._failed or self.keep:
                print(f"control plane logs kept in {self.workdir / 'logs'}", flush=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def mark_failed(self) -> None:
        """Keep the logs when this control plane is stopped (a test using it failed)."""
        self._failed = True

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each process, for the figures in the README."""
        return {name: _rss_kib(proc.pid) for name, proc in self.processes.items()}

    # -- files -----------------------------------------------------------------------------

    def _write_pki(self) -> None:
        pki = self._dir / "pki"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "2", "-subj", "/CN=phasegate-test-ca", cwd=pki)
        (pki / "serving.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key", "-out", "serving.csr",
                 "-subj", "/CN=kube-apiserver", cwd=pki)
        _openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "serving.crt", "-days", "2", "-extfile", "serving.ext", cwd=pki)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)

    def _write_tokens(self) -> None:
        groups = {ADMIN: "system:masters", OBSERVER: "system:masters", NODE_AGENT: "system:masters",
                  CONTROLLER_MANAGER: ""}
        lines = []
        for n, (user, group) in enumerate(groups.items()):
            token = secrets.token_urlsafe(24)
            self.tokens[user] = token
            lines.append(f'{token},{user},uid-{n},"{group}"' if group else f"{token},{user},uid-{n}")
        path = self._dir / "pki" / "tokens.csv"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        (self._dir / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))

    def write_kubeconfig(self, path: str | Path, *, user: str = ADMIN, namespace: str = "default",
                         context: str = "phasegate-k8s", token: str | None = None) -> Path:
        """A kubeconfig for kubectl and the Python client; ``token`` overrides the user's
        (a ServiceAccount's token, for RBAC tests)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context, "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.server,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token or self.tokens[user]}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": user,
                                                       "namespace": namespace}}],
        }
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(config, indent=2))
        partial.chmod(0o600)
        partial.replace(path)
        return path

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self._dir / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            # Own session: a Ctrl-C in the terminal reaches the test runner, which stops these.
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()
        self.processes[name] = proc
        return proc

    def _wait(self, name: str, probe: object, what: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        proc = self.processes[name]
        while True:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode} before {what}; "
                                        f"see {self._dir / 'logs' / (name + '.log')}")
            if probe():  # type: ignore[operator]
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name}: no {what} after {self.ready_timeout:.0f}s; "
                                        f"see {self._dir / 'logs' / (name + '.log')}")
            time.sleep(0.05)

    def _start_etcd(self, etcd: Path) -> None:
        client, peer = _free_port(), _free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(etcd), "--name", "phasegate", "--data-dir", str(self._dir / "etcd"),
            "--listen-client-urls", self._etcd_url, "--advertise-client-urls", self._etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"phasegate=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(self._etcd_url + "/health", timeout=1) as r:
                    return json.loads(r.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        self._wait("etcd", healthy, "health")

    def _get(self, path: str, user: str = ADMIN) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.tokens[user]}"})
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def _start_apiserver(self, binary: Path) -> None:
        pki = self._dir / "pki"
        self.apiserver_port = _free_port()
        self._spawn("kube-apiserver", [
            str(binary), "--etcd-servers", self._etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.apiserver_port), "--insecure-port", "0",
            "--tls-cert-file", str(pki / "serving.crt"), "--tls-private-key-file", str(pki / "serving.key"),
            "--client-ca-file", str(pki / "ca.crt"), "--token-auth-file", str(pki / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", SA_ISSUER,
            "--service-cluster-ip-range", SERVICE_CIDR, "--endpoint-reconciler-type", "none",
            "--audit-policy-file", str(self._dir / "audit-policy.json"),
            "--audit-log-path", str(self.audit_log), "--audit-log-format", "json",
            "--cert-dir", str(pki), "--profiling=false", "--logtostderr", "-v", "1",
        ])
        self._wait("kube-apiserver", lambda: self._get("/readyz")[0] == 200, "ready /readyz")

    def _start_controller_manager(self, binary: Path) -> None:
        pki = self._dir / "pki"
        kubeconfig = self.write_kubeconfig(pki / "controller-manager.kubeconfig", user=CONTROLLER_MANAGER)
        self._spawn("kube-controller-manager", [
            str(binary), "--kubeconfig", str(kubeconfig), "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "ca.crt"),
            "--bind-address", "127.0.0.1", "--secure-port", "0", "--port", "0",
            "--service-cluster-ip-range", SERVICE_CIDR, "--profiling=false", "--logtostderr", "-v", "1",
            "--kube-api-qps", "500", "--kube-api-burst", "1000",
        ])

        # The service-account controller creating "default" in the default namespace is the
        # first sign that the controllers are running (and pods can be admitted).
        def controllers_running() -> bool:
            status, body = self._get("/api/v1/namespaces/default/serviceaccounts/default", user=OBSERVER)
            return status == 200 and b"secrets" in body

        self._wait("kube-controller-manager", controllers_running, "default service account with a token")
