"""The synthetic app: traffic by ready replicas, faults on the new version only while its
flag is on and from its phase's offset, zero-initialised series."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from phasegate.rehearsal.app import GATE_QUERIES, NEW_IMAGE, OLD_IMAGE, SyntheticApp, TrackObservation, TrafficProfile
from phasegate.rehearsal.scenarios import Fault, Scenario
from phasegate.templates import VARIABLES, placeholders, render

NS, DEPLOY = "prod", "bodhi-server"


class FakeClock:
    speed = 1.0

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, plan_seconds: float) -> None:
        self.t += plan_seconds

    def to_wall(self, plan_seconds: float) -> float:
        return plan_seconds


def obs(track: str, image: str, ready: int = 1, flag: bool = True, phase: str | None = "canary-10pct") -> TrackObservation:
    return TrackObservation(NS, DEPLOY, track, image, ready, flag, phase)


class World:
    """A mutable list of observations the app reads each tick."""

    def __init__(self, *observations: TrackObservation) -> None:
        self.observations = list(observations)

    def __call__(self) -> list[TrackObservation]:
        return self.observations


def value(app: SyntheticApp, metric: str, track: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(metric, {"namespace": NS, "deployment": DEPLOY, "track": track, **labels})


def make_app(world: World, scenario: Scenario | None = None, clock: FakeClock | None = None) -> SyntheticApp:
    return SyntheticApp(world, NEW_IMAGE, scenario, clock or FakeClock(), profile=TrafficProfile(200.0), seed=7)


TOKEN_FAULT = Scenario(name="t", faults=[Fault(phase="canary-10pct", after="10m", token_not_active_per_s=5.0)])


def test_every_label_combination_starts_at_zero() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE)))
    app.tick(0.0)
    for kind in ("token_not_active", "lock_timeout"):
        assert value(app, "token_refresh_errors_total", "canary", type=kind) == 0.0
    for code in ("200", "500"):
        assert value(app, "http_requests_total", "canary", code=code) == 0.0
    assert value(app, "token_refresh_lock_timeouts_total", "canary") == 0.0
    assert value(app, "api_response_time_ms_count", "canary") == 0.0


def test_traffic_is_proportional_to_ready_replicas() -> None:
    app = make_app(World(obs("stable", OLD_IMAGE, ready=9), obs("canary", NEW_IMAGE, ready=1)))
    for _ in range(50):
        app.tick(0.2)
    stable = value(app, "api_response_time_ms_count", "stable") or 0
    canary = value(app, "api_response_time_ms_count", "canary") or 0
    assert stable / canary == pytest.approx(9, rel=0.1)
    assert canary == pytest.approx(200 * 10, rel=0.1)


def test_track_without_ready_replicas_has_no_traffic() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE, ready=0)))
    for _ in range(10):
        app.tick(0.2)
    assert value(app, "api_response_time_ms_count", "canary") == 0.0


def test_fault_starts_at_its_phase_plus_offset_in_plan_time() -> None:
    clock = FakeClock()
    world = World(obs("canary", NEW_IMAGE, phase="staging"))
    app = make_app(world, TOKEN_FAULT, clock)
    app.tick(1.0)
    clock.sleep(3600)  # an hour of staging: the fault waits for the canary phase
    assert app.effects_for(world()[0]).token_not_active_per_s == 0
    world.observations = [obs("canary", NEW_IMAGE, phase="canary-10pct")]
    app.tick(1.0)
    clock.sleep(9 * 60)
    assert app.effects_for(world()[0]).token_not_active_per_s == 0
    clock.sleep(60)
    assert app.effects_for(world()[0]).token_not_active_per_s == 5.0
    for _ in range(10):
        app.tick(1.0)
    assert (value(app, "token_refresh_errors_total", "canary", type="token_not_active") or 0) > 0


def test_fault_follows_the_new_image_not_the_track() -> None:
    world = World(obs("stable", NEW_IMAGE, ready=10, phase="full"))
    app = make_app(world, Scenario(name="t", faults=[Fault(token_not_active_per_s=5.0)]))
    for _ in range(10):
        app.tick(1.0)
    assert (value(app, "token_refresh_errors_total", "stable", type="token_not_active") or 0) > 0


def test_old_image_is_never_faulty() -> None:
    app = make_app(World(obs("stable", OLD_IMAGE)), Scenario(name="t", faults=[Fault(token_not_active_per_s=5.0)]))
    assert app.effects_for(obs("stable", OLD_IMAGE)) is None


def test_feature_flag_off_turns_the_new_code_path_and_its_faults_off() -> None:
    world = World(obs("canary", NEW_IMAGE, ready=2, flag=False))
    app = make_app(world, Scenario(name="t", faults=[Fault(token_not_active_per_s=5.0, lock_timeout_ratio=0.5)]))
    for _ in range(20):
        app.tick(0.5)
    assert value(app, "token_refresh_errors_total", "canary", type="token_not_active") == 0
    # Without the lock the old race returns: more than one refresh per expiration.
    assert value(app, "concurrency_lock_acquisitions_total", "canary") == 0
    calls = value(app, "token_refresh_calls_total", "canary") or 0
    expirations = value(app, "token_expirations_total", "canary") or 0
    assert calls > expirations > 0


def test_new_version_refreshes_once_per_expiration() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE, ready=2)))
    for _ in range(20):
        app.tick(0.5)
    assert value(app, "token_refresh_calls_total", "canary") == value(app, "token_expirations_total", "canary")
    assert (value(app, "token_refresh_double_check_hits_total", "canary") or 0) > 0


def test_removed_track_series_disappear() -> None:
    world = World(obs("stable", OLD_IMAGE), obs("canary", NEW_IMAGE))
    app = make_app(world)
    app.tick(0.2)
    world.observations = [obs("stable", OLD_IMAGE)]
    app.tick(0.2)
    assert value(app, "http_requests_total", "canary", code="200") is None
    assert value(app, "http_requests_total", "stable", code="200") is not None


def test_exporter_serves_on_loopback_and_stops() -> None:
    with make_app(World(obs("canary", NEW_IMAGE))) as app:
        assert app.target.startswith("127.0.0.1:")
        body = urllib.request.urlopen(f"http://{app.target}/metrics", timeout=2).read().decode()
        assert 'token_refresh_errors_total{deployment="bodhi-server",namespace="prod",track="canary"' in body
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect(("127.0.0.1", app.port))


@pytest.mark.parametrize("name", sorted(GATE_QUERIES))
def test_gate_queries_are_templates_the_plan_can_render(name: str) -> None:
    template = GATE_QUERIES[name]
    assert placeholders(template) <= set(VARIABLES)
    rendered = render(template, {"namespace": NS, "deployment": DEPLOY, "track": "canary", "window": "5m"})
    assert "{{" not in rendered and 'namespace="prod"' in rendered


def test_bulk_observation_fills_the_same_buckets_and_sum_as_observing_one_by_one() -> None:
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from phasegate.rehearsal.app import _observe_many

    # Values on, between and beyond the bounds, including +Inf's bucket.
    values = np.array([0.0, 5.0, 5.000001, 24.9, 25.0, 99.0, 1e6, 3.3, 5.0])
    bulk_registry, single_registry = CollectorRegistry(), CollectorRegistry()
    buckets = (5.0, 25.0, 100.0)
    bulk = Histogram("lat_ms", "", ["track"], buckets=buckets, registry=bulk_registry)
    single = Histogram("lat_ms", "", ["track"], buckets=buckets, registry=single_registry)
    _observe_many(bulk.labels("canary"), values)
    for v in values:
        single.labels("canary").observe(float(v))
    def exposed(registry: CollectorRegistry) -> list[bytes]:
        return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]

    assert exposed(bulk_registry) == exposed(single_registry)
    assert b'lat_ms_bucket{le="5.0",track="canary"} 4.0' in exposed(bulk_registry)
