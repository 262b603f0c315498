"""The synthetic application: an exporter that behaves like the seed's service under load.

Design decisions:

* It exports the seed's metrics in Prometheus naming (``token_refresh.lock.timeouts`` →
  ``token_refresh_lock_timeouts_total``; ``*_duration_ms`` → histograms with millisecond
  buckets), per track, labelled ``namespace``, ``deployment`` (the target Deployment's
  name on both tracks, so one template serves both) and ``track``.
* Every label combination is initialised at 0 when a track first appears, so "zero
  errors" reads 0, not "no data". A track that disappears (canary removed) has its series
  removed, as a deleted pod's series go stale.
* Traffic is proportional to a track's ready replicas: Poisson request counts and
  log-normal latencies per tick (every ~0.2 s wall). A healthy canary and stable are then
  statistically alike, and a canary with no ready pod has no traffic, so its traffic gates
  read NoData rather than a reassuring zero.
* The app sees the world only through ``observe() -> list[TrackObservation]``; the
  rehearsal builds that from the cluster emulator (image, ready replicas, feature flag,
  current phase). It does not import the emulator.
* The old version has no lock: each request that finds an expired token refreshes it
  itself, so ``refreshes per expiration`` is above 1 and the lock series stay at 0. The new
  version (image ``new_image`` with its feature flag on) refreshes once per expiration
  under a lock; concurrent waiters find the fresh token on the double check.
* Faults (``scenarios.Scenario``) apply to whichever track runs ``new_image``, only while
  its flag is on, from a phase and plan-time offset measured with the given ``Clock`` from
  when the app first observes that phase.

``GATE_QUERIES`` below are the PromQL for the seed's gates, as ``templates.render`` input.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from phasegate.clock import Clock, RealClock
from phasegate.rehearsal.scenarios import HEALTHY, Effects, Scenario

OLD_IMAGE = "registry.example/bodhi-server:1.4.2"
NEW_IMAGE = "registry.example/bodhi-server:1.5.0"

_SEL = 'namespace="{{namespace}}",deployment="{{deployment}}",track="{{track}}"'
_CANARY = 'namespace="{{namespace}}",deployment="{{deployment}}",track="canary"'
_STABLE = 'namespace="{{namespace}}",deployment="{{deployment}}",track="stable"'


def _p99(metric: str, sel: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{sel}}}[{{{{window}}}}])))"


def _incr(metric: str, sel: str = _SEL, extra: str = "") -> str:
    return f"sum(increase({metric}{{{extra}{sel}}}[{{{{window}}}}]))"


def _error_rate(sel: str) -> str:
    return (
        f'sum(rate(http_requests_total{{code=~"5..",{sel}}}[{{{{window}}}}]))'
        f" / sum(rate(http_requests_total{{{sel}}}[{{{{window}}}}]))"
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
    "token_not_active_errors": _incr("token_refresh_errors_total", extra='type="token_not_active",'),
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
class TrackObservation:
    """What the app needs to know about one track of one Deployment right now."""

    namespace: str
    deployment: str
    track: str
    image: str
    ready_replicas: int
    flag_enabled: bool
    phase: str | None


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


Observe = Callable[[], list[TrackObservation]]


class SyntheticApp:
    """A Prometheus exporter on 127.0.0.1 simulating the seed's service for each observed track."""

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
    ) -> None:
        self.observe = observe
        self.new_image = new_image
        self.scenario = scenario
        self.clock = clock or RealClock()
        profile = profile or TrafficProfile()
        if requests_per_replica_per_s is not None:
            profile = TrafficProfile(**{**profile.__dict__, "requests_per_replica_per_s": requests_per_replica_per_s})
        self.profile = profile
        self.tick_seconds = tick_seconds
        self.origin = self.clock.now()
        # Plan time each phase was first observed; faults count their offset from it.
        self.phase_seen: dict[str, float] = {}
        self.port = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._known: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: WSGIServer | None = None
        self.registry = CollectorRegistry()
        self._define_metrics()

    def _define_metrics(self) -> None:
        labels = ("namespace", "deployment", "track")
        r = self.registry
        self.errors = Counter("token_refresh_errors", "Token refresh errors by type", (*labels, "type"), registry=r)
        self.lock_timeouts = Counter("token_refresh_lock_timeouts", "Lock acquisition timeouts", labels, registry=r)
        self.lock_wait = Histogram(
            "token_refresh_lock_acquisition_duration_ms", "Wait to acquire the refresh lock (ms)", labels,
            buckets=LOCK_BUCKETS_MS, registry=r,
        )
        self.with_lock = Histogram(
            "token_refresh_with_lock_duration_ms", "Refresh duration with the lock held (ms)", labels,
            buckets=LATENCY_BUCKETS_MS, registry=r,
        )
        self.api_latency = Histogram(
            "api_response_time_ms", "API response time (ms)", labels, buckets=LATENCY_BUCKETS_MS, registry=r
        )
        self.auth_failures = Counter("auth_failures", "Authentication failures", labels, registry=r)
        self.locks_active = Gauge("concurrency_locks_active", "Refresh locks held now", labels, registry=r)
        self.lock_acquisitions = Counter(
            "concurrency_lock_acquisitions", "Successful lock acquisitions", labels, registry=r
        )
        self.double_check_hits = Counter(
            "token_refresh_double_check_hits", "Refreshes avoided by the double check", labels, registry=r
        )
        self.refresh_calls = Counter("token_refresh_calls", "Refresh-token calls to Keycloak", labels, registry=r)
        self.expirations = Counter("token_expirations", "Access tokens found expired", labels, registry=r)
        self.requests = Counter("http_requests", "HTTP requests by status code", (*labels, "code"), registry=r)
        self._per_track = (
            self.lock_timeouts, self.lock_wait, self.with_lock, self.api_latency, self.auth_failures,
            self.locks_active, self.lock_acquisitions, self.double_check_hits, self.refresh_calls, self.expirations,
        )

    # --- lifecycle -------------------------------------------------------------------

    @property
    def target(self) -> str:
        """``host:port`` for a Prometheus scrape config."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> SyntheticApp:
        if self._thread is not None:
            return self
        # Port 0: the OS picks a free port at bind time, so there is no race with other servers.
        # What start_http_server does, minus gzip: on loopback compressing every scrape of a
        # hundred targets was a fifth of the world's CPU and saves nothing.
        server = make_server("127.0.0.1", 0, make_wsgi_app(self.registry, disable_compression=True),
                             ThreadingWSGIServer, handler_class=_SilentHandler)
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

    # --- behaviour -------------------------------------------------------------------

    def effects_for(self, obs: TrackObservation) -> Effects | None:
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

    def tick(self, dt: float) -> None:
        """Advance every observed track by ``dt`` wall seconds of traffic."""
        observations = self.observe()
        now = self.clock.now()
        with self._lock:
            for obs in observations:
                if obs.phase is not None:
                    self.phase_seen.setdefault(obs.phase, now)
            current = {(o.namespace, o.deployment, o.track) for o in observations}
            for key in self._known - current:
                self._forget(key)
            for obs in observations:
                key = (obs.namespace, obs.deployment, obs.track)
                if key not in self._known:
                    self._initialise(key)
                    self._known.add(key)
                if dt > 0:
                    self._simulate(key, obs, dt)

    def _initialise(self, key: tuple[str, str, str]) -> None:
        for kind in ERROR_TYPES:
            self.errors.labels(*key, kind)
        for code in STATUS_CODES:
            self.requests.labels(*key, code)
        for metric in self._per_track:
            metric.labels(*key)

    def _forget(self, key: tuple[str, str, str]) -> None:
        self._known.discard(key)
        for kind in ERROR_TYPES:
            self.errors.remove(*key, kind)
        for code in STATUS_CODES:
            self.requests.remove(*key, code)
        for metric in self._per_track:
            metric.remove(*key)

    def _simulate(self, key: tuple[str, str, str], obs: TrackObservation, dt: float) -> None:
        p, rng = self.profile, self._rng
        effects = self.effects_for(obs)
        new_code = effects is not None
        fx = effects or HEALTHY
        n = int(rng.poisson(p.requests_per_replica_per_s * max(0, obs.ready_replicas) * dt))
        if n == 0:
            self.locks_active.labels(*key).set(0)
            return

        latencies = rng.lognormal(math.log(p.latency_median_ms), p.latency_sigma, n) + fx.latency_add_ms
        _observe_many(self.api_latency.labels(*key), latencies)

        not_active = int(rng.poisson(fx.token_not_active_per_s * dt))
        server_errors = int(rng.binomial(n, min(1.0, p.error_ratio + fx.error_rate_add)))
        auth_failed = min(n - server_errors, int(rng.binomial(n, p.auth_failure_ratio)) + not_active)
        self.requests.labels(*key, "500").inc(server_errors)
        self.requests.labels(*key, "401").inc(auth_failed)
        self.requests.labels(*key, "200").inc(n - server_errors - auth_failed)
        self.auth_failures.labels(*key).inc(auth_failed)
        self.errors.labels(*key, "token_not_active").inc(not_active)

        expired = int(rng.binomial(n, p.expiry_ratio))
        waiters = int(rng.poisson(p.waiters_per_expiry * expired))
        self.expirations.labels(*key).inc(expired)
        refresh_ms = rng.lognormal(math.log(p.refresh_median_ms), p.refresh_sigma, expired)
        if not new_code:
            # No lock: every request holding the expired token refreshes it itself.
            self.refresh_calls.labels(*key).inc(expired + waiters)
            self.locks_active.labels(*key).set(0)
            return

        attempts = expired + waiters
        timeouts = int(rng.binomial(attempts, fx.lock_timeout_ratio))
        waiter_timeouts = min(waiters, timeouts)
        owner_timeouts = timeouts - waiter_timeouts
        refreshes = expired - owner_timeouts
        self.refresh_calls.labels(*key).inc(refreshes)
        self.lock_timeouts.labels(*key).inc(timeouts)
        self.errors.labels(*key, "lock_timeout").inc(timeouts)
        self.lock_acquisitions.labels(*key).inc(attempts - timeouts)
        self.double_check_hits.labels(*key).inc(waiters - waiter_timeouts)

        _observe_many(self.with_lock.labels(*key), refresh_ms[:refreshes])
        # The lock owner barely waits; a waiter waits for part of the owner's refresh.
        owner_waits = rng.lognormal(math.log(p.lock_uncontended_median_ms), 0.5, refreshes)
        typical_refresh = float(np.median(refresh_ms)) if expired else p.refresh_median_ms
        waiter_waits = rng.uniform(0, 1, waiters - waiter_timeouts) * typical_refresh
        _observe_many(self.lock_wait.labels(*key), np.concatenate([owner_waits, waiter_waits]) + fx.lock_latency_add_ms)
        # Little's law: locks held at once = refreshes per second × time each is held.
        held = (refreshes / dt) * (p.refresh_median_ms / 1000) if dt else 0.0
        self.locks_active.labels(*key).set(int(rng.poisson(held)))


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
