"""The synthetic app: one exporter per pod, traffic to ready pods only, faults on the new
version only while its flag is on and from its phase's offset, series labelled only by
discovery and children that appear on their first increment, as prometheus_client does."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest

from phasegate import gates
from phasegate.rehearsal.app import (
    GATE_QUERIES,
    NEW_IMAGE,
    OLD_IMAGE,
    PodObservation,
    SyntheticApp,
    TrackObservation,
    TrafficProfile,
)
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
    """A mutable list of tracks whose pods the app reads each tick."""

    def __init__(self, *tracks: TrackObservation) -> None:
        self.tracks = list(tracks)

    def __call__(self) -> list[PodObservation]:
        return [p for t in self.tracks for p in t.pods()]


def pods_of(app: SyntheticApp, track: str) -> list[str]:
    regex = gates.pods_regex(gates.workload(DEPLOY, track))
    return [name for ns, name in app._pods if ns == NS and re.fullmatch(regex, name)]


def value(app: SyntheticApp, metric: str, track: str, **labels: str) -> float | None:
    """The track's value summed over its pods; None if no pod has the series at all."""
    found = [app.registry(NS, pod).get_sample_value(metric, labels) for pod in pods_of(app, track)]
    present = [v for v in found if v is not None]
    return sum(present) if present else None


def make_app(world: World, scenario: Scenario | None = None, clock: FakeClock | None = None, **kw) -> SyntheticApp:
    return SyntheticApp(world, NEW_IMAGE, scenario, clock or FakeClock(), profile=TrafficProfile(200.0), seed=7, **kw)


TOKEN_FAULT = Scenario(name="t", faults=[Fault(phase="canary-10pct", after="10m", token_not_active_per_s=5.0)])


def test_unlabelled_metrics_start_at_zero_and_labelled_children_are_absent_until_their_first_increment() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE)))
    app.tick(0.0)
    assert value(app, "token_refresh_lock_timeouts_total", "canary") == 0.0
    assert value(app, "api_response_time_ms_count", "canary") == 0.0
    for kind in ("token_not_active", "lock_timeout"):
        assert value(app, "token_refresh_errors_total", "canary", type=kind) is None
    for code in ("200", "500"):
        assert value(app, "http_requests_total", "canary", code=code) is None


def test_a_pods_first_error_appears_already_counted() -> None:
    world = World(obs("canary", NEW_IMAGE))
    app = make_app(world, Scenario(name="t", faults=[Fault(token_not_active_per_s=50.0)]))
    app.tick(0.0)
    assert value(app, "token_refresh_errors_total", "canary", type="token_not_active") is None
    app.tick(0.5)
    assert (value(app, "token_refresh_errors_total", "canary", type="token_not_active") or 0) >= 1


def test_no_series_names_its_own_namespace_deployment_or_track() -> None:
    with make_app(World(obs("canary", NEW_IMAGE), obs("stable", OLD_IMAGE, ready=2))) as app:
        app.tick(0.5)
        for group in app.target_groups():
            path = group["labels"]["__metrics_path__"]
            body = urllib.request.urlopen(f"http://{app.address}{path}", timeout=2).read().decode()
            assert "http_requests_total" in body
            assert not re.search(r'\b(namespace|deployment|track|pod)="', body), body[:500]


def test_target_groups_carry_the_labels_prometheus_operator_attaches() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE, ready=2)))
    app.tick(0.0)
    groups = app.target_groups()
    assert len(groups) == 2
    for group in groups:
        labels = group["labels"]
        assert set(labels) == {"__metrics_path__", "namespace", "pod", "container", "service", "endpoint", "job",
                               "instance"}
        assert labels["namespace"] == NS and labels["service"] == labels["job"] == DEPLOY
        assert re.fullmatch(gates.pods_regex("bodhi-server-canary"), labels["pod"])
        assert labels["instance"].endswith(":8080")
        assert group["targets"] == [app.address]


def test_pod_labels_reach_series_only_where_pod_target_labels_copy_them() -> None:
    app = make_app(World(obs("canary", NEW_IMAGE)), pod_target_labels=["pod-template-hash"])
    app.tick(0.0)
    labels = app.target_groups()[0]["labels"]
    assert "pod_template_hash" in labels and "app" not in labels


def test_traffic_goes_to_ready_pods_in_proportion() -> None:
    app = make_app(World(obs("stable", OLD_IMAGE, ready=9), obs("canary", NEW_IMAGE, ready=1)))
    for _ in range(50):
        app.tick(0.2)
    stable = value(app, "api_response_time_ms_count", "stable") or 0
    canary = value(app, "api_response_time_ms_count", "canary") or 0
    assert stable / canary == pytest.approx(9, rel=0.1)
    assert canary == pytest.approx(200 * 10, rel=0.1)


def test_a_pod_that_is_not_ready_serves_metrics_but_gets_no_traffic() -> None:
    pod = obs("canary", NEW_IMAGE).pods()[0]
    not_ready = PodObservation(**{**pod.__dict__, "ready": False})
    app = SyntheticApp(lambda: [not_ready], NEW_IMAGE, None, FakeClock(), seed=1)
    for _ in range(10):
        app.tick(0.2)
    assert app.registry(NS, pod.name).get_sample_value("api_response_time_ms_count") == 0.0
    assert len(app.target_groups()) == 1


def test_fault_starts_at_its_phase_plus_offset_in_plan_time() -> None:
    clock = FakeClock()
    world = World(obs("canary", NEW_IMAGE, phase="staging"))
    app = make_app(world, TOKEN_FAULT, clock)
    app.tick(1.0)
    clock.sleep(3600)  # an hour of staging: the fault waits for the canary phase
    assert app.effects_for(world()[0]).token_not_active_per_s == 0
    world.tracks = [obs("canary", NEW_IMAGE, phase="canary-10pct")]
    app.tick(1.0)
    clock.sleep(9 * 60)
    assert app.effects_for(world()[0]).token_not_active_per_s == 0
    clock.sleep(60)
    assert app.effects_for(world()[0]).token_not_active_per_s == 5.0
    for _ in range(10):
        app.tick(1.0)
    assert (value(app, "token_refresh_errors_total", "canary", type="token_not_active") or 0) > 0


def test_a_faults_rate_is_the_services_split_across_new_pods() -> None:
    one = make_app(World(obs("stable", NEW_IMAGE, ready=1, phase="full")), Scenario(name="t", faults=[Fault(
        token_not_active_per_s=20.0)]))
    ten = make_app(World(obs("stable", NEW_IMAGE, ready=10, phase="full")), Scenario(name="t", faults=[Fault(
        token_not_active_per_s=20.0)]))
    for app in (one, ten):
        for _ in range(50):
            app.tick(0.2)
    a = value(one, "token_refresh_errors_total", "stable", type="token_not_active") or 0
    b = value(ten, "token_refresh_errors_total", "stable", type="token_not_active") or 0
    assert a == pytest.approx(200, rel=0.25) and b == pytest.approx(200, rel=0.25)


def test_old_image_is_never_faulty() -> None:
    app = make_app(World(obs("stable", OLD_IMAGE)), Scenario(name="t", faults=[Fault(token_not_active_per_s=5.0)]))
    assert app.effects_for(obs("stable", OLD_IMAGE).pods()[0]) is None


def test_feature_flag_off_turns_the_new_code_path_and_its_faults_off() -> None:
    world = World(obs("canary", NEW_IMAGE, ready=2, flag=False))
    app = make_app(world, Scenario(name="t", faults=[Fault(token_not_active_per_s=5.0, lock_timeout_ratio=0.5)]))
    for _ in range(20):
        app.tick(0.5)
    assert value(app, "token_refresh_errors_total", "canary", type="token_not_active") is None
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


def test_a_deleted_pod_leaves_discovery_and_its_path_answers_404() -> None:
    world = World(obs("stable", OLD_IMAGE), obs("canary", NEW_IMAGE))
    seen: list[list[dict]] = []
    with make_app(world, on_targets=seen.append) as app:
        canary = pods_of(app, "canary")[0]
        world.tracks = [obs("stable", OLD_IMAGE)]
        app.tick(0.2)
        assert [g["labels"]["pod"] for g in seen[-1]] == pods_of(app, "stable")
        assert app.registry(NS, canary) is None
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{app.address}/pods/{NS}/{canary}/metrics", timeout=2)
        assert err.value.code == 404
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect(("127.0.0.1", app.port))


def test_generated_pod_names_select_their_own_track_only() -> None:
    for track, other in (("stable", "canary"), ("canary", "stable")):
        for pod in obs(track, NEW_IMAGE, ready=5).pods():
            assert re.fullmatch(gates.pods_regex(gates.workload(DEPLOY, track)), pod.name)
            assert not re.fullmatch(gates.pods_regex(gates.workload(DEPLOY, other)), pod.name)


@pytest.mark.parametrize("name", sorted(GATE_QUERIES))
def test_gate_queries_are_templates_the_plan_can_render(name: str) -> None:
    template = GATE_QUERIES[name]
    assert placeholders(template) <= set(VARIABLES)
    scope = gates.Scope(NS, DEPLOY, "canary")
    from phasegate.plan import load_plan_text

    plan = load_plan_text(MINIMAL)
    rendered = render(template, gates.variables(plan, scope, "canary", "5m"))
    assert "{{" not in rendered and 'namespace="prod"' in rendered
    assert "track=" not in rendered and "deployment=" not in rendered


MINIMAL = """
apiVersion: phasegate/v1
name: t
target: {deployment: bodhi-server, container: bodhi-server, namespaces: {production: prod}}
metrics:
  m: {query: 'sum(rate(x{pod=~"{{pods}}"}[{{window}}]))'}
phases:
  - {name: c, environment: production, canary_share: 10, soak: 1h, interval: 5m,
     triggers: [{name: t, metric: m, kind: zero, rollback: canary_only}]}
"""


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
