"""The synthetic application: one exporter per pod, behaving like the seed's service under load.

Design decisions:

* It exports the seed's metrics in Prometheus naming (``token_refresh.lock.timeouts`` →
  ``token_refresh_lock_timeouts_total``; ``*_duration_ms`` → histograms with millisecond
  buckets), one registry and one ``/pods/<namespace>/<pod>/metrics`` path **per pod**, as
  every replica of a real service serves its own ``/metrics``. No series carries
  ``namespace``, ``deployment`` or ``track``: who a series belongs to is said by the target
  labels Prometheus attaches on discovery (``target_groups``: what prometheus-operator's
  ServiceMonitor gives — ``namespace``, ``pod``, ``container``, ``service``, ``endpoint``,
  ``job``, ``instance`` — and pod labels only where ``pod_target_labels`` copies them).
* As with ``prometheus_client`` in a real process: an unlabelled metric is exported at 0
  from the pod's start; a labelled child (an error ``type``, a status ``code``) appears on
  its first increment, already at 1 or more. "Zero errors" is then no series at all, and
  the first error of a pod is a new series — which a gate must not miss.
* A deleted pod's registry is dropped and it leaves discovery, so its series go stale as
  in a cluster; a replacement pod starts from nothing under its own name.
* Traffic goes to ready pods only: Poisson request counts and log-normal latencies per
  tick (every ~0.2 s wall). A healthy canary and stable are then statistically alike, and a
  canary with no ready pod has no traffic, so its traffic gates read NoData rather than a
  reassuring zero.
* The app sees the world only through ``observe() -> list[PodObservation]``; the rehearsal
  builds that from the cluster emulator's pods (name, labels, image, readiness, feature
  flag, current phase). It does not import the emulator.
* The old version has no lock: each request that finds an expired token refreshes it
  itself, so ``refreshes per expiration`` is above 1 and the lock series stay at 0. The new
  version (image ``new_image`` with its feature flag on) refreshes once per expiration
  under a lock; concurrent waiters find the fresh token on the double check.
* Faults (``scenarios.Scenario``) apply to pods running ``new_image``, only while the flag
  is on, from a phase and plan-time offset measured with the given ``Clock`` from when the
  app first observes that phase. A fault's rate (errors per second) is the service's, split
  across the pods running the new version.

* That token-refresh model is one of two. A plan that reads other metrics gets the workload
  derived from its own queries (``workload.derive``: families, types, labelled children),
  given as ``workload=``: every family on every pod, events Poisson, histogram observations
  log-normal, error children taking the error share; the faults then come as effects per
  family (``scenarios.Resolved``), on the same pods and from the same moments.

``GATE_QUERIES`` below are the PromQL for the seed's gates, as ``templates.render`` input,
selecting pods by name (``{{pods}}``) as on a stock kube-prometheus.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from phasegate.clock import Clock, RealClock
from phasegate.gates import K8S_ALPHABET
from phasegate.rehearsal import workload as wl
from phasegate.rehearsal.scenarios import HEALTHY, Effects, Resolved, Scenario

OLD_IMAGE = "registry.example/bodhi-server:1.4.2"
NEW_IMAGE = "registry.example/bodhi-server:1.5.0"

_SEL = 'namespace="{{namespace}}",pod=~"{{pods}}"'
# Both tracks in one query: the canary's pods and the stable's, named out (gates.pods_regex).
_POD = f"[{K8S_ALPHABET}]{{1,10}}-[{K8S_ALPHABET}]{{5}}"
_CANARY = f'namespace="{{{{namespace}}}}",pod=~"{{{{deployment}}}}-canary-{_POD}"'
_STABLE = f'namespace="{{{{namespace}}}}",pod=~"{{{{deployment}}}}-{_POD}"'


def _p99(metric: str, sel: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{sel}}}[{{{{window}}}}])))"


def _incr(metric: str, sel: str = _SEL, extra: str = "") -> str:
    return f"sum(increase({metric}{{{extra}{sel}}}[{{{{window}}}}]))"


def _error_rate(sel: str) -> str:
    # No 5xx series until the first 5xx: none is a rate of 0, provided there is traffic.
    return (
        f'(sum(rate(http_requests_total{{code=~"5..",{sel}}}[{{{{window}}}}])) or on() vector(0))'
        f" / sum(rate(http_requests_total{{{sel}}}[{{{{window}}}}]))"
    )


def _new_errors(metric: str, sel: str, extra: str = "") -> str:
    """Errors counted by a labelled counter over the window, the first one included.

    The child appears on its first increment, already at 1: ``increase()`` needs two samples
    and reads nothing, then 0, for it. So the count is ``increase()`` of the series that
    existed before the window plus the first value of those born inside it (present now,
    absent one window ago); neither part existing is 0 — as long as the pods are seen at
    all (``and on()`` their request counter), so a selector matching nothing stays no data.
    """
    s = f"{metric}{{{extra}{sel}}}"
    return (
        f"((sum(increase({s}[{{{{window}}}}])) or on() vector(0))"
        f" + (sum(min_over_time({s}[{{{{window}}}}]) unless {s} offset {{{{window}}}}) or on() vector(0)))"
        f" and on() sum(rate(http_requests_total{{{sel}}}[{{{{window}}}}]))"
    )


_LOCK_ATTEMPTS = (
    f"({_incr('token_refresh_lock_timeouts_total')} + {_incr('concurrency_lock_acquisitions_total')})"
)
_LOCK_TIMEOUT_RATIO = f"{_incr('token_refresh_lock_timeouts_total')} / clamp_min({_LOCK_ATTEMPTS}, 1)"

# The seed's gates as PromQL templates ({{namespace}}, {{deployment}}, {{track}}, {{window}}).
#
# Lock gates read "no lock activity" as zero timeouts and zero wait (clamp_min, or vector(0)):
# the old version, which is the stable track during a canary, and the new one with its flag
# off take no lock, and a preflight on the stable track must still get a number. Traffic
# gates (error rate, API p99, refreshes per expiration) stay NaN without traffic, so the
# provider reports NoData and a canary with no traffic is never judged healthy.
GATE_QUERIES: dict[str, str] = {
    # "Any 'Token is not active' errors" / "Should be ZERO" (critical alert: increase > 0)
    "token_not_active_errors": _new_errors("token_refresh_errors_total", _SEL, extra='type="token_not_active",'),
    # "Lock timeout rate > 1%" (rollback trigger): timeouts / acquisition attempts
    "lock_timeout_ratio": _LOCK_TIMEOUT_RATIO,
    # alert TokenRefreshLockTimeout: rate(token_refresh.lock.timeouts[5m]) > 0.01 (per second)
    "lock_timeouts_per_s": f"sum(rate(token_refresh_lock_timeouts_total{{{_SEL}}}[{{{{window}}}}]))",
    # "Lock acquisition success rate > 99.9%" (canary) / "> 99.95%" (full rollout)
    "lock_success_ratio": f"1 - ({_LOCK_TIMEOUT_RATIO})",
    # alert LockAcquisitionLatencyHigh: p99 > 100 ms
    "lock_acquisition_p99_ms": f"({_p99('token_refresh_lock_acquisition_duration_ms', _SEL)} >= 0) or on() vector(0)",
    "refresh_with_lock_p99_ms": f"({_p99('token_refresh_with_lock_duration_ms', _SEL)} >= 0) or on() vector(0)",
    # "No performance degradation", compared with the baseline
    "api_p99_ms": _p99("api_response_time_ms", _SEL),
    # "Error rate equal to or lower than baseline"
    "error_rate": _error_rate(_SEL),
    # "auth.failures.total → should not increase"
    "auth_failures": _incr("auth_failures_total"),
    # "Verify single refresh token call per expiration": 1.0 with the lock, > 1 without
    "refreshes_per_expiration": f"{_incr('token_refresh_calls_total')} / {_incr('token_expirations_total')}",
    # "Double-check effectiveness": share of would-be refreshes the double check avoided
    "double_check_hit_ratio": (
        f"{_incr('token_refresh_double_check_hits_total')}"
        f" / clamp_min({_incr('token_refresh_double_check_hits_total')} + {_incr('token_refresh_calls_total')}, 1)"
    ),
    "locks_active": f"sum(concurrency_locks_active{{{_SEL}}})",
    "lock_acquisitions_per_s": f"sum(rate(concurrency_lock_acquisitions_total{{{_SEL}}}[{{{{window}}}}]))",
    # Canary-vs-baseline triggers; these name both tracks and ignore {{track}}.
    # "P99 latency increase > 50ms" (trigger), "< 20ms increase" (success criterion)
    "api_p99_increase_ms": f"{_p99('api_response_time_ms', _CANARY)} - {_p99('api_response_time_ms', _STABLE)}",
    # "Error rate increase > 0.1%"
    "error_rate_increase": f"({_error_rate(_CANARY)}) - ({_error_rate(_STABLE)})",
}

# Millisecond buckets, dense where the seed's thresholds are (20/50/100 ms steps on p99).
LATENCY_BUCKETS_MS = (
    *range(5, 100, 5), *range(100, 300, 10), *range(300, 600, 25), 600, 700, 800, 900, 1000,
    1250, 1500, 2000, 2500, 3000, 4000, 5000,
)
LOCK_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, *range(10, 150, 5), *range(150, 300, 25), 300, 400, 500, 750, 1000, 2000, 5000)
ERROR_TYPES = ("token_not_active", "lock_timeout", "invalid_grant", "network")
STATUS_CODES = ("200", "401", "500", "503")


@dataclass(frozen=True)
class PodObservation:
    """What the app needs to know about one pod right now."""

    namespace: str
    name: str
    image: str
    ready: bool
    flag_enabled: bool
    phase: str | None
    ip: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    container: str = "app"
    service: str = "app"
    port_name: str = "http"
    port: int = 8080


@dataclass(frozen=True)
class TrackObservation:
    """A track of ``replicas`` ready pods, for worlds without a cluster (fixtures, benches):
    ``pods()`` names them as a ReplicaSet would."""

    namespace: str
    deployment: str
    track: str
    image: str
    ready_replicas: int
    flag_enabled: bool
    phase: str | None

    def pods(self) -> list[PodObservation]:
        workload = self.deployment + ("-canary" if self.track == "canary" else "")
        digest = hashlib.sha256(f"{self.namespace}/{workload}/{self.image}".encode()).digest()
        pod_hash = "".join(K8S_ALPHABET[b % len(K8S_ALPHABET)] for b in digest[:10])
        out = []
        for i in range(self.ready_replicas):
            d = hashlib.sha256(f"{pod_hash}/{i}".encode()).digest()
            suffix = "".join(K8S_ALPHABET[b % len(K8S_ALPHABET)] for b in d[:5])
            out.append(PodObservation(
                self.namespace, f"{workload}-{pod_hash}-{suffix}", self.image, True, self.flag_enabled, self.phase,
                ip=f"10.{len(self.namespace) % 250}.{d[5]}.{d[6] % 250 + 2}",
                labels=(("app", self.deployment), ("pod-template-hash", pod_hash)),
                container=self.deployment, service=self.deployment,
            ))
        return out


def pods_of(tracks: Iterable[TrackObservation]) -> list[PodObservation]:
    return [p for t in tracks for p in t.pods()]


@dataclass(frozen=True)
class TrafficProfile:
    """How the service behaves when healthy; rates are per wall second."""

    requests_per_replica_per_s: float = 100.0
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.3
    error_ratio: float = 0.0005
    auth_failure_ratio: float = 0.0002
    # Share of requests that find their access token expired and need a refresh.
    expiry_ratio: float = 0.02
    # Other requests holding the same expired token at that moment.
    waiters_per_expiry: float = 0.5
    refresh_median_ms: float = 35.0
    refresh_sigma: float = 0.3
    lock_uncontended_median_ms: float = 1.5


Observe = Callable[[], list[PodObservation]]
TargetGroups = list[dict[str, Any]]


class _Pod:
    """One pod's registry: what its /metrics would serve."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.errors = Counter("token_refresh_errors", "Token refresh errors by type", ("type",), registry=r)
        self.lock_timeouts = Counter("token_refresh_lock_timeouts", "Lock acquisition timeouts", registry=r)
        self.lock_wait = Histogram(
            "token_refresh_lock_acquisition_duration_ms", "Wait to acquire the refresh lock (ms)",
            buckets=LOCK_BUCKETS_MS, registry=r,
        )
        self.with_lock = Histogram(
            "token_refresh_with_lock_duration_ms", "Refresh duration with the lock held (ms)",
            buckets=LATENCY_BUCKETS_MS, registry=r,
        )
        self.api_latency = Histogram("api_response_time_ms", "API response time (ms)", buckets=LATENCY_BUCKETS_MS,
                                     registry=r)
        self.auth_failures = Counter("auth_failures", "Authentication failures", registry=r)
        self.locks_active = Gauge("concurrency_locks_active", "Refresh locks held now", registry=r)
        self.lock_acquisitions = Counter("concurrency_lock_acquisitions", "Successful lock acquisitions", registry=r)
        self.double_check_hits = Counter(
            "token_refresh_double_check_hits", "Refreshes avoided by the double check", registry=r
        )
        self.refresh_calls = Counter("token_refresh_calls", "Refresh-token calls to Keycloak", registry=r)
        self.expirations = Counter("token_expirations", "Access tokens found expired", registry=r)
        self.requests = Counter("http_requests", "HTTP requests by status code", ("code",), registry=r)


# What the token-refresh model exports (prometheus_client family names): a plan reading only
# these is rehearsed with it; any other plan with the workload derived from its queries.
SEED_FAMILIES = frozenset({
    "token_refresh_errors", "token_refresh_lock_timeouts", "token_refresh_lock_acquisition_duration_ms",
    "token_refresh_with_lock_duration_ms", "api_response_time_ms", "auth_failures", "concurrency_locks_active",
    "concurrency_lock_acquisitions", "token_refresh_double_check_hits", "token_refresh_calls", "token_expirations",
    "http_requests",
})


class _DerivedPod:
    """One pod's registry with every family of a derived workload."""

    def __init__(self, workload: wl.Workload) -> None:
        self.registry = CollectorRegistry()
        self.collectors: dict[str, Any] = {}
        self.dropped: set[str] = set()
        for fam in workload.families:
            labels = fam.label_names
            if fam.kind is wl.Kind.HISTOGRAM:
                buckets = tuple(b * fam.unit_scale for b in LATENCY_BUCKETS_MS)
                metric: Any = Histogram(fam.name, f"{fam.name} (derived)", labels, buckets=buckets,
                                        registry=self.registry)
            elif fam.kind is wl.Kind.COUNTER:
                metric = Counter(fam.name, f"{fam.name} (derived)", labels, registry=self.registry)
            else:
                metric = Gauge(fam.name, f"{fam.name} (derived)", labels, registry=self.registry)
            self.collectors[fam.name] = metric

    def child(self, family: str, child: wl.Child) -> Any:
        metric = self.collectors[family]
        return metric.labels(*(v for _, v in child.labels)) if child.labels else metric

    def drop(self, family: str) -> None:
        """The new version exports no such family: its series go stale, as after a rename."""
        if family not in self.dropped:
            self.registry.unregister(self.collectors[family])
            self.dropped.add(family)


def _inc(counter: Any, amount: int, *labels: str) -> None:
    """Increment only if something happened: a labelled child must not appear at 0."""
    if amount > 0:
        (counter.labels(*labels) if labels else counter).inc(amount)



class _NoDelayHandler(_SilentHandler):
    """wsgiref writes a response's headers and body apart: with Nagle on, a proxied check's
    body waited for the client's delayed ACK (40 ms). Pods' servers (Go, uvicorn) set
    TCP_NODELAY; so does this one."""

    disable_nagle_algorithm = True

class SyntheticApp:
    """Prometheus exporters on 127.0.0.1 (one path per pod) simulating the seed's service."""

    def __init__(
        self,
        observe: Observe,
        new_image: str,
        scenario: Scenario | None = None,
        clock: Clock | None = None,
        *,
        profile: TrafficProfile | None = None,
        requests_per_replica_per_s: float | None = None,
        tick_seconds: float = 0.2,
        seed: int | None = None,
        pod_target_labels: Sequence[str] = (),
        on_targets: Callable[[TargetGroups], None] | None = None,
        workload: wl.Workload | None = None,
        resolved: Resolved | None = None,
    ) -> None:
        """``pod_target_labels``: pod labels copied onto every series (a PodMonitor's or
        ServiceMonitor's ``podTargetLabels``); none by default, as on a stock install.
        ``on_targets``: told the file_sd target groups whenever the set of pods changes.
        ``workload``: export these families instead of the token-refresh model's, with the
        faults of ``resolved``."""
        self.observe = observe
        self.new_image = new_image
        self.scenario = scenario
        self.workload = workload
        self.resolved = resolved
        self.clock = clock or RealClock()
        profile = profile or TrafficProfile()
        if requests_per_replica_per_s is not None:
            profile = TrafficProfile(**{**profile.__dict__, "requests_per_replica_per_s": requests_per_replica_per_s})
        self.profile = profile
        self.tick_seconds = tick_seconds
        self.pod_target_labels = tuple(pod_target_labels)
        self.on_targets = on_targets
        self.origin = self.clock.now()
        # Plan time each phase was first observed; faults count their offset from it.
        self.phase_seen: dict[str, float] = {}
        self.port = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], Any] = {}
        self._groups: TargetGroups = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: WSGIServer | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` every pod's path is served on."""
        return f"127.0.0.1:{self.port}"

    def target_groups(self) -> TargetGroups:
        """file_sd groups, one per pod, labelled as prometheus-operator labels its targets."""
        with self._lock:
            return list(self._groups)

    def start(self) -> SyntheticApp:
        if self._thread is not None:
            return self
        # Port 0: the OS picks a free port at bind time, so there is no race with other servers.
        # No gzip: on loopback compressing every scrape of a hundred targets was a fifth of
        # the world's CPU and saves nothing.
        server = make_server("127.0.0.1", 0, self._wsgi, ThreadingWSGIServer, handler_class=_NoDelayHandler)
        threading.Thread(target=server.serve_forever, name="synthetic-app-http", daemon=True).start()
        self._server = server
        self.port = int(server.server_port)
        self.tick(0.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="synthetic-app", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SyntheticApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick_seconds):
            now = time.monotonic()
            self.tick(now - last)
            last = now

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        pod = None
        if len(parts) >= 3 and parts[0] == "pods":
            with self._lock:
                pod = self._pods.get((parts[1], parts[2]))
        if pod is None:
            # A deleted pod's address answers nothing, as in a cluster.
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such pod\n"]
        if parts[3:] != ["metrics"]:
            # Any other path is the service's API (a smoke or load check through the API
            # server's service proxy): a running pod answers it.
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        body = generate_latest(pod.registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def registry(self, namespace: str, pod: str) -> CollectorRegistry | None:
        """A pod's registry (tests read values from it)."""
        with self._lock:
            found = self._pods.get((namespace, pod))
            return found.registry if found is not None else None

    def serves(self, namespace: str, pod: str) -> bool:
        """Whether ``pod``'s container answers HTTP: a pod the cluster runs does from the moment
        it has an address, not from this app's next tick (a check the API server proxies to a
        pod that just became Ready must not find it deaf)."""
        with self._lock:
            if (namespace, pod) in self._pods:
                return True
        obs = next((o for o in self.observe() if (o.namespace, o.name) == (namespace, pod)), None)
        if obs is None:
            return False
        with self._lock:
            self._pods.setdefault((namespace, pod), _Pod() if self.workload is None else _DerivedPod(self.workload))
        return True

    # --- behaviour -------------------------------------------------------------------

    def effects_for(self, obs: PodObservation) -> Effects | None:
        """The active faults for ``obs``; ``None`` if it runs the old code path."""
        if obs.image != self.new_image:
            return None
        if not obs.flag_enabled:
            # The flag switches the new code path off, but not a fault in the version itself.
            stubborn = self.scenario is not None and any(f.despite_flag for f in self.scenario.faults)
            if not stubborn:
                return None
            assert self.scenario is not None
            return self.scenario.effects(self.clock.now(), self.phase_seen, self.origin, flag_enabled=False)
        if self.scenario is None:
            return HEALTHY
        return self.scenario.effects(self.clock.now(), self.phase_seen, self.origin)

    def _group(self, obs: PodObservation) -> dict[str, Any]:
        labels = {
            "__metrics_path__": f"/pods/{obs.namespace}/{obs.name}/metrics",
            "namespace": obs.namespace, "pod": obs.name, "container": obs.container, "service": obs.service,
            "endpoint": obs.port_name, "job": obs.service, "instance": f"{obs.ip or obs.name}:{obs.port}",
        }
        for name, value in obs.labels:
            if name in self.pod_target_labels:
                labels[_label_name(name)] = value
        return {"targets": [self.address], "labels": labels}

    def tick(self, dt: float) -> None:
        """Advance every observed pod by ``dt`` wall seconds of traffic."""
        now = self.clock.now()
        with self._lock:
            # Observed under the lock: a pod ``serves`` admitted since is then in this view,
            # not dropped as gone and recreated with its counters back at zero.
            observations = self.observe()
            for obs in observations:
                if obs.phase is not None:
                    self.phase_seen.setdefault(obs.phase, now)
            current = {(o.namespace, o.name): o for o in observations}
            for key in set(self._pods) - set(current):
                del self._pods[key]
            for key in current:
                if key not in self._pods:
                    self._pods[key] = _Pod() if self.workload is None else _DerivedPod(self.workload)
            groups = [self._group(o) for o in current.values()]
            changed = groups != self._groups
            self._groups = groups
            new_code = sum(1 for o in observations if o.ready and self.effects_for(o) is not None)
            if dt > 0:
                for key, obs in current.items():
                    if obs.ready:
                        self._simulate(self._pods[key], obs, dt, max(new_code, 1))
        if changed and self.on_targets is not None:
            self.on_targets(self.target_groups())

    def family_effects_for(self, obs: PodObservation) -> dict[str, wl.FamilyEffect] | None:
        """A derived workload's active effects for ``obs``; ``None`` if it runs the old version."""
        if obs.image != self.new_image:
            return None
        if self.resolved is None:
            return {}
        return self.resolved.family_effects(self.clock.now(), self.phase_seen, self.origin,
                                            flag_enabled=obs.flag_enabled)

    def _simulate_derived(self, pod: _DerivedPod, obs: PodObservation, dt: float, new_code_pods: int) -> None:
        assert self.workload is not None
        work, rng = self.workload, self._rng
        effects = self.family_effects_for(obs) or {}
        for fam in work.families:
            fx = effects.get(fam.name, wl.NO_EFFECT)
            if fx.absent:
                pod.drop(fam.name)
                continue
            levels = work.levels(fam)
            share = fx.error_share if fx.error_share is not None else levels.error_share
            kids = fam.children(share)
            if fam.kind is wl.Kind.GAUGE:
                for kid in kids:
                    pod.child(fam.name, kid).set(fx.level if fx.level is not None else levels.level)
                continue
            n = int(rng.poisson(work.event_rate(fam, fx.error_share) * fx.rate_factor * dt))
            n += int(rng.poisson(fx.service_rate * dt / new_code_pods))
            weights = np.array([k.weight for k in kids])
            counts = rng.multinomial(n, weights / weights.sum())
            for kid, count in zip(kids, counts, strict=True):
                if not count:
                    continue  # a labelled child appears on its first event, never at 0
                child = pod.child(fam.name, kid)
                if fam.kind is wl.Kind.COUNTER:
                    child.inc(int(count))
                    continue
                latency = levels.latency
                values = rng.lognormal(math.log(latency.median), latency.sigma, int(count))
                _observe_many(child, values * fx.latency_scale + fx.latency_shift)

    def _simulate(self, pod: Any, obs: PodObservation, dt: float, new_code_pods: int) -> None:
        if isinstance(pod, _DerivedPod):
            self._simulate_derived(pod, obs, dt, new_code_pods)
            return
        p, rng = self.profile, self._rng
        effects = self.effects_for(obs)
        new_code = effects is not None
        fx = effects or HEALTHY
        n = int(rng.poisson(p.requests_per_replica_per_s * dt))
        if n == 0:
            pod.locks_active.set(0)
            return

        latencies = rng.lognormal(math.log(p.latency_median_ms), p.latency_sigma, n) + fx.latency_add_ms
        _observe_many(pod.api_latency, latencies)

        # A fault's error rate is the service's: split across the pods running the new code.
        not_active = int(rng.poisson(fx.token_not_active_per_s * dt / new_code_pods))
        session_ended = int(rng.poisson(fx.session_not_active_per_s * dt / new_code_pods))
        server_errors = int(rng.binomial(n, min(1.0, p.error_ratio + fx.error_rate_add)))
        auth_failed = min(n - server_errors, int(rng.binomial(n, p.auth_failure_ratio)) + not_active + session_ended)
        _inc(pod.requests, server_errors, "500")
        _inc(pod.requests, auth_failed, "401")
        _inc(pod.requests, n - server_errors - auth_failed, "200")
        _inc(pod.auth_failures, auth_failed)
        _inc(pod.errors, not_active, "token_not_active")
        _inc(pod.errors, session_ended, "session_not_active")

        expired = int(rng.binomial(n, p.expiry_ratio))
        waiters = int(rng.poisson(p.waiters_per_expiry * expired))
        _inc(pod.expirations, expired)
        refresh_ms = rng.lognormal(math.log(p.refresh_median_ms), p.refresh_sigma, expired)
        if not new_code:
            # No lock: every request holding the expired token refreshes it itself.
            _inc(pod.refresh_calls, expired + waiters)
            pod.locks_active.set(0)
            return

        attempts = expired + waiters
        timeouts = int(rng.binomial(attempts, fx.lock_timeout_ratio))
        waiter_timeouts = min(waiters, timeouts)
        owner_timeouts = timeouts - waiter_timeouts
        refreshes = expired - owner_timeouts
        # A lock that lets waiters through: they refresh too, as the old code did.
        extra = int(rng.poisson(fx.extra_refreshes_per_expiration * expired))
        _inc(pod.refresh_calls, refreshes + extra)
        _inc(pod.lock_timeouts, timeouts)
        _inc(pod.errors, timeouts, "lock_timeout")
        _inc(pod.lock_acquisitions, attempts - timeouts)
        _inc(pod.double_check_hits, waiters - waiter_timeouts)

        _observe_many(pod.with_lock, refresh_ms[:refreshes])
        # The lock owner barely waits; a waiter waits for part of the owner's refresh.
        owner_waits = rng.lognormal(math.log(p.lock_uncontended_median_ms), 0.5, refreshes)
        typical_refresh = float(np.median(refresh_ms)) if expired else p.refresh_median_ms
        waiter_waits = rng.uniform(0, 1, waiters - waiter_timeouts) * typical_refresh
        _observe_many(pod.lock_wait, np.concatenate([owner_waits, waiter_waits]) + fx.lock_latency_add_ms)
        # Little's law: locks held at once = refreshes per second × time each is held.
        held = (refreshes / dt) * (p.refresh_median_ms / 1000) if dt else 0.0
        pod.locks_active.set(int(rng.poisson(held)))


def _label_name(pod_label: str) -> str:
    # Prometheus' labelmap turns a pod label's invalid characters into underscores.
    return re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def _observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, in one pass.

    A rehearsal emits thousands of requests a second per target; observing them one by one
    cost more CPU than everything else in the world, and with many targets the app fell
    behind its scrapes. Same buckets as ``observe``: the first upper bound >= the value.
    """
    if len(values) == 0:
        return
    bounds = histogram._upper_bounds  # prometheus_client has no bulk observe
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(int(count))
    histogram._sum.inc(float(np.sum(values)))
