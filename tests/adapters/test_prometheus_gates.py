"""The seed's gate queries on a real Prometheus scraping the synthetic app.

Each namespace of the session Prometheus runs one built-in scenario (faults active from
the start): a fault must move exactly the gates it is about, on the canary only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from phasegate import measure
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.rehearsal.app import GATE_QUERIES
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.templates import render
from tests.fixtures.prometheus import RunningApp

TRACKS = ("stable", "canary")

# The seed's rollback triggers and alert thresholds, as predicates on a gate's value.
TRIGGERS: dict[str, Callable[[float], bool]] = {
    "token_not_active_errors": lambda v: v > 0,  # "Any 'Token is not active' errors"
    "api_p99_increase_ms": lambda v: v > 50,  # "P99 latency increase > 50ms"
    "error_rate_increase": lambda v: v > 0.001,  # "Error rate increase > 0.1%"
    "lock_timeout_ratio": lambda v: v > 0.01,  # "Lock timeout rate > 1%"
    "lock_success_ratio": lambda v: v < 0.999,  # "Lock acquisition success rate > 99.9%"
    "lock_acquisition_p99_ms": lambda v: v > 100,  # alert LockAcquisitionLatencyHigh
    "refreshes_per_expiration": lambda v: v > 1.0 + 1e-9,  # "single refresh per expiration"
}
FIRES = {
    "healthy": set(),
    "latency-marginal": set(),
    "token-not-active": {"token_not_active_errors"},
    "latency-regression": {"api_p99_increase_ms"},
    "error-rate": {"error_rate_increase"},
    "lock-timeouts": {"lock_timeout_ratio", "lock_success_ratio", "lock_acquisition_p99_ms"},
}


def _round(
    prometheus: PrometheusProvider, running: RunningApp, tracks: tuple[str, ...] = TRACKS
) -> dict[tuple[str, str], measure.Sample]:
    queries = {
        (name, track): render(template, running.labels(track))
        for name, template in GATE_QUERIES.items()
        for track in tracks
    }
    return measure.collect(prometheus, queries)


def test_every_seed_gate_query_returns_a_value_for_both_tracks(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp]
) -> None:
    samples = _round(prometheus, synthetic_apps["healthy"])
    missing = {key: s.error for key, s in samples.items() if not s.ok}
    assert not missing


def test_healthy_canary_meets_the_seed_success_criteria(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp]
) -> None:
    s = _round(prometheus, synthetic_apps["healthy"], ("canary",))
    assert s["token_not_active_errors", "canary"].value == 0
    assert s["lock_success_ratio", "canary"].value == 1
    assert s["refreshes_per_expiration", "canary"].value == pytest.approx(1.0)
    assert abs(s["api_p99_increase_ms", "canary"].value) < 20  # "< 20ms increase"
    assert s["error_rate_increase", "canary"].value <= 0.001  # "equal to or lower than baseline"


def test_old_version_on_stable_refreshes_more_than_once_per_expiration_and_takes_no_lock(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp]
) -> None:
    s = _round(prometheus, synthetic_apps["healthy"])
    assert s["refreshes_per_expiration", "stable"].value > 1.2
    assert s["lock_acquisitions_per_s", "stable"].value == 0
    assert s["double_check_hit_ratio", "stable"].value == 0
    assert s["double_check_hit_ratio", "canary"].value > 0


@pytest.mark.parametrize("scenario", sorted(FIRES))
def test_fault_scenario_fires_exactly_its_triggers_on_the_canary(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp], scenario: str
) -> None:
    samples = _round(prometheus, synthetic_apps[scenario], ("canary",))
    values = {name: samples[name, "canary"].value for name in TRIGGERS}
    assert all(v is not None for v in values.values()), values
    fired = {name for name, fires in TRIGGERS.items() if fires(values[name])}  # type: ignore[arg-type]
    assert fired == FIRES[scenario], values


@pytest.mark.parametrize("scenario", sorted(FIRES))
def test_faults_never_touch_the_stable_track_running_the_old_version(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp], scenario: str
) -> None:
    s = _round(prometheus, synthetic_apps[scenario], ("stable",))
    assert s["token_not_active_errors", "stable"].value == 0
    assert s["lock_timeout_ratio", "stable"].value == 0
    assert s["error_rate", "stable"].value < 0.001
    assert s["api_p99_ms", "stable"].value < 100


@pytest.mark.parametrize(("scenario", "low", "high"), [("latency-regression", 60, 100), ("latency-marginal", 20, 50)])
def test_latency_scenarios_land_on_their_side_of_the_seed_thresholds(
    prometheus: PrometheusProvider, synthetic_apps: dict[str, RunningApp], scenario: str, low: float, high: float
) -> None:
    running = synthetic_apps[scenario]
    increase = prometheus.query(render(GATE_QUERIES["api_p99_increase_ms"], running.labels("canary")))
    assert low < increase < high


def test_concurrent_round_overlaps_its_queries(
    prometheus_server: PrometheusServer, synthetic_apps: dict[str, RunningApp]
) -> None:
    """A round of N gates is one wave of queries in flight, not N queries in turn (nor two
    waves: the seed's 30 queries fit in the shared pool at once)."""
    wanted = len(GATE_QUERIES) * len(TRACKS)
    provider = _InFlight(prometheus_server.provider(), wanted=wanted)
    samples = _round(provider, synthetic_apps["healthy"])  # type: ignore[arg-type]
    assert len(samples) == wanted <= measure.DEFAULT_MAX_WORKERS
    assert all(s.ok for s in samples.values())
    assert provider.peak == wanted


def test_killed_prometheus_gives_error_samples_and_a_restarted_one_recovers(
    disposable_prometheus: PrometheusServer,
) -> None:
    provider = disposable_prometheus.provider(timeout=2)
    queries = {"a": "vector(1)", "b": "vector(2)"}
    assert {k: s.value for k, s in measure.collect(provider, queries).items()} == {"a": 1.0, "b": 2.0}
    disposable_prometheus.kill()
    down = measure.collect(provider, queries)
    assert all(s.value is None and "ProviderUnavailable" in (s.error or "") for s in down.values())
    assert not any(s.no_data or s.rejected for s in down.values())
    disposable_prometheus.start()
    assert {k: s.value for k, s in measure.collect(provider, queries).items()} == {"a": 1.0, "b": 2.0}


def test_bad_gate_query_is_a_rejected_sample(prometheus: PrometheusProvider) -> None:
    samples = measure.collect(prometheus, {"ok": "vector(1)", "bad": "sum(rate(x[5m]"})
    assert samples["ok"].value == 1.0
    assert samples["bad"].rejected and "parse error" in (samples["bad"].error or "")


class _InFlight:
    """Around a real provider: each query waits (up to 5 s) until ``wanted`` are in flight.

    Run in turn, no query would ever see company and ``peak`` would stay 1.
    """

    def __init__(self, inner: PrometheusProvider, wanted: int) -> None:
        self.inner = inner
        self.wanted = wanted
        self.now = 0
        self.peak = 0
        self._cond = threading.Condition()

    def query(self, promql: str) -> float:
        with self._cond:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.peak >= self.wanted, timeout=5)
        try:
            return self.inner.query(promql)
        finally:
            with self._cond:
                self.now -= 1
