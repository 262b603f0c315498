"""A plan for another service rehearses on a workload derived from its own queries.

tests/plans/orders-spring.yaml is a Spring Boot service's plan (Micrometer's
``http_server_requests_seconds`` histogram with ``status`` and ``uri`` tags, 5 % → 25 % →
100 %, no staging, no feature flag, namespace ``shop``): nothing of the seed's may be needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from phasegate.plan import load_plan, load_plan_text
from phasegate.rehearsal import workload as wl
from phasegate.rehearsal.app import SyntheticApp, TrackObservation, pods_of
from phasegate.rehearsal.scenarios import ScenarioError, parse_scenario_source, resolve
from phasegate.rehearsal.world import default_image, prepare, seed_options
from tests.rehearsal.test_app import FakeClock

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ROOT / "tests/plans/orders-spring.yaml"
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
P95_FAULT = ROOT / "tests/plans/scenarios/orders-p95-regression.yaml"
UNKNOWN_GATE = ROOT / "tests/plans/scenarios/orders-unknown-gate.yaml"
ERRORS_AT_FULL = ROOT / "tests/plans/scenarios/orders-errors-at-full.yaml"
FAMILY = "http_server_requests_seconds"


@pytest.fixture(scope="module")
def orders():
    return load_plan(ORDERS)


@pytest.fixture(scope="module")
def orders_workload(orders):
    return wl.derive(orders)


def children(workload: wl.Workload, name: str, share: float = 0.01) -> dict[tuple, float]:
    family = workload.family(name)
    assert family is not None
    return {c.labels: round(c.weight, 6) for c in family.children(share)}


def test_a_spring_histogram_read_by_bucket_and_count_is_one_histogram_with_5xx_and_2xx_children(orders_workload):
    assert [(f.name, f.kind) for f in orders_workload.families] == [(FAMILY, wl.Kind.HISTOGRAM)]
    # status=~"5.." picks a share of the route's requests: both children, 1 % of them 5xx.
    assert children(orders_workload, FAMILY) == {
        (("status", "500"), ("uri", "/orders")): 0.01, (("status", "200"), ("uri", "/orders")): 0.99}


def test_target_labels_are_left_to_discovery(orders_workload):
    labels = {m.label for s in orders_workload.selectors for m in s.matchers}
    assert labels == {"status", "uri"}  # never namespace or pod: Prometheus attaches those


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        # A negative matcher: the series it keeps and the ones it leaves out.
        ('rate(x_total{code!~"5..|4.."}[5m])', {(("code", "200"),): 0.99, (("code", "500"),): 0.01}),
        # Two routes by equality: each its own child, sharing the traffic.
        ('rate(x_total{route="/a"}[5m]) / rate(x_total{route="/b"}[5m])',
         {(("route", "/a"),): 0.5, (("route", "/b"),): 0.5}),
        # Micrometer's outcome tag: the error outcome takes the error share.
        ('rate(x_total{outcome="SERVER_ERROR"}[5m]) / rate(x_total[5m])',
         {(("outcome", "SERVER_ERROR"),): 0.01, (("outcome", "other"),): 0.99}),
    ],
)
def test_matchers_become_children_that_satisfy_them(selector: str, expected: dict) -> None:
    sels = wl.selectors("m", selector)
    family = wl._family("x", wl.Kind.COUNTER, sels)
    assert {c.labels: round(c.weight, 6) for c in family.children(0.01)} == expected
    for s in sels:  # every query selects at least one child
        assert any(s.selects(dict(c.labels)) for c in family.children(0.01))


def test_types_follow_prometheus_naming_in_the_seed_plan() -> None:
    kinds = {f.name: f.kind for f in wl.derive(load_plan(SEED)).families}
    assert kinds["api_response_time_ms"] is wl.Kind.HISTOGRAM
    assert kinds["token_refresh_lock_timeouts"] is wl.Kind.COUNTER
    assert kinds["concurrency_locks_active"] is wl.Kind.GAUGE


def test_a_count_read_without_rate_is_a_gauge_of_that_name() -> None:
    plan = load_plan_text(ORDERS.read_text().replace(
        "  p95_seconds:", "  classes:\n    query: sum(jvm_classes_loaded_count{pod=~\"{{pods}}\"})\n  p95_seconds:"))
    kinds = {f.name: f.kind for f in wl.derive(plan).families}
    assert kinds == {FAMILY: wl.Kind.HISTOGRAM, "jvm_classes_loaded_count": wl.Kind.GAUGE}


def test_a_family_read_by_a_zero_gate_has_no_errors_when_healthy() -> None:
    workload = wl.derive(load_plan(TWO_PHASE))
    errors = workload.family("token_refresh_errors")
    assert errors is not None and errors.name in workload.quiet
    assert workload.levels(errors).error_share == 0.0


def test_a_query_the_parser_rejects_is_an_error_naming_the_metric() -> None:
    with pytest.raises(wl.WorkloadError, match="metric 'broken'"):
        wl.selectors("broken", "sum(rate(x[5m])")


def test_levels_come_from_the_workload_file(tmp_path: Path, orders) -> None:
    file = tmp_path / "orders.workload.yaml"
    file.write_text(f"defaults: {{requests_per_s: 50}}\nmetrics:\n  {FAMILY}:\n"
                    "    error_share: 0.02\n    latency: {median: 0.12, sigma: 0.2}\n")
    workload = wl.derive(orders, wl.load_workload_file(file)[0])
    levels = workload.levels(workload.families[0])
    assert (levels.requests_per_s, levels.error_share, levels.latency) == (50, 0.02, wl.Latency(0.12, 0.2))
    file.write_text("defaults: {request_rate: 50}\n")
    with pytest.raises(wl.WorkloadError, match=rf"{file}:1: defaults.request_rate: Extra inputs"):
        wl.load_workload_file(file)
    file.write_text("metrics:\n  http_server_requests_seconds: {error_share: 0.01}\n  jvm_threads_live: {level: 3}\n")
    with pytest.raises(wl.WorkloadError, match=rf"{file}:3: metrics.jvm_threads_live: no query of the plan reads"):
        prepare(orders, "healthy", file)


def test_labels_the_plan_fills_from_placeholders_are_left_to_discovery() -> None:
    text = ORDERS.read_text().replace('pod=~"{{pods}}"', 'pod=~"{{pods}}",rs="{{pod_template_hash}}"')
    assert [f.label_names for f in wl.derive(load_plan_text(text)).families] == [("status", "uri")]


# --- faults in the plan's language ------------------------------------------------------


def test_push_on_a_ratio_gate_scales_the_canary_latency_past_the_bound(orders, orders_workload) -> None:
    gate = next(g for g in orders.phase("canary-5pct").triggers if g.name == "p95-ratio")
    assert wl.gate_effects(orders, orders_workload, gate, 2.0) == {FAMILY: wl.FamilyEffect(latency_scale=3.0)}


def test_push_on_an_error_delta_gate_raises_the_error_share(orders, orders_workload) -> None:
    gate = next(g for g in orders.phase("canary-5pct").triggers if g.name == "error-rate-delta")
    effect = wl.gate_effects(orders, orders_workload, gate, 2.0)[FAMILY]
    assert math.isclose(effect.error_share or 0, wl.DEFAULT_ERROR_SHARE + 0.04)


def test_push_on_an_absolute_latency_gate_moves_the_quantile_to_push_times_the_bound(orders, orders_workload):
    gate = next(g for g in orders.phase("full").triggers if g.name == "p95-absolute")
    effect = wl.gate_effects(orders, orders_workload, gate, 2.0)[FAMILY]
    healthy_p95 = orders_workload.levels(orders_workload.families[0]).latency.quantile(0.95)
    assert math.isclose(healthy_p95 + effect.latency_shift, 1.0)  # 2 × 0.5 s


def test_a_scenario_naming_what_the_plan_lacks_is_refused_at_file_and_line(orders) -> None:
    with pytest.raises(ScenarioError) as caught:
        prepare(orders, str(UNKNOWN_GATE))
    assert caught.value.problems == [
        f"{UNKNOWN_GATE}:7: faults.0.gate: phase 'canary-5pct' has no gate 'p99-ratio'; its gates: p95-ratio, "
        "error-rate-delta, p95-within-range",
        f"{UNKNOWN_GATE}:10: faults.1.metric: no query of the plan reads a metric family 'jvm_gc_pause_seconds'; "
        f"it reads: {FAMILY}",
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name: x\nfaults:\n  - {phase: canary-10pct, gate: p95-ratio, push: 2}\n", 3,
         "faults.0.phase: the plan has no phase 'canary-10pct'; its phases: canary-5pct, canary-25pct, full"),
        ("name: x\nfaults:\n  - {phase: full, token_not_active_per_s: 2}\n", 3,
         "faults.0: this is a fault of the seed's token-refresh model, and plan 'orders-api-v2' reads other"),
        ("name: x\nfaults:\n  - phase: full\n    metric: http_server_requests_seconds_count\n    level: 3\n", 4,
         "faults.0.metric: 'http_server_requests_seconds' is a histogram, not a gauge"),
        ("name: x\nfaults:\n  -\n    phase: full\n    gate: error-rate\n", 4,
         "faults.0: Value error, a gate fault needs push"),
    ],
)
def test_bad_faults_are_refused_naming_the_line(orders, orders_workload, text: str, line: int, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario, source = parse_scenario_source(text, "s.yaml")
        resolve(scenario, orders, orders_workload, seed_covers=False, source=source)
    assert caught.value.problems[0].startswith(f"s.yaml:{line}: {message}"), caught.value.problems


def test_the_seed_plan_keeps_the_token_refresh_model_for_its_scenarios() -> None:
    resolved, derived = prepare(load_plan(SEED), "token-not-active")
    assert not resolved.derived and derived is None
    resolved, derived = prepare(load_plan(SEED), "healthy")
    assert derived is None


@pytest.mark.parametrize(
    ("phase", "gate", "push", "builtin", "field"),
    [
        # The built-in scenarios' sizes, said in the plan's language.
        ("canary-10pct", "p99-latency-increase", 1.6, "latency-regression", "latency_add_ms"),
        ("canary-10pct", "latency-within-range", 1.5, "latency-marginal", "latency_add_ms"),
        ("canary-10pct", "error-rate-increase", 5.0, "error-rate", "error_rate_add"),
        ("canary-10pct", "token-not-active", 1.0, "token-not-active", "token_not_active_per_s"),
        ("canary-10pct", "lock-timeout-rate", 3.0, "lock-timeouts", "lock_timeout_ratio"),
    ],
)
def test_a_gate_fault_on_the_seed_plan_is_the_built_in_scenario_in_the_plans_language(
        phase: str, gate: str, push: float, builtin: str, field: str) -> None:
    plan = load_plan(SEED)
    scenario, _ = parse_scenario_source(f"name: x\nfaults:\n  - {{phase: {phase}, after: 10m, gate: {gate}, "
                                        f"push: {push}}}\n")
    resolved, derived = prepare(plan, scenario)
    assert derived is None  # the token-refresh model, as for the built-ins
    fault = resolved.scenario.faults[0]
    expected = prepare(plan, builtin)[0].scenario.faults[0]
    assert math.isclose(getattr(fault, field), getattr(expected, field))
    assert (fault.phase, fault.after_seconds) == (expected.phase, expected.after_seconds)


def test_a_raw_fault_may_name_the_family_a_series_or_the_catalogue_key(orders, orders_workload) -> None:
    for name in (FAMILY, f"{FAMILY}_bucket", "p95_seconds"):
        scenario, source = parse_scenario_source(f"name: x\nfaults:\n  - {{metric: {name}, latency_shift: 0.1}}\n")
        resolved = resolve(scenario, orders, orders_workload, seed_covers=False, source=source)
        assert resolved.faults[0].effects == {FAMILY: wl.FamilyEffect(latency_shift=0.1)}


def test_a_gate_no_effect_can_move_is_refused_naming_it() -> None:
    scenario, source = parse_scenario_source(
        "name: x\nfaults:\n  - {phase: staging, gate: single-refresh, push: 2}\n", "s.yaml")
    # Refresh calls divided by refresh calls: always 1, whatever the workload does.
    plan = load_plan_text(SEED.read_text().replace(
        "/ sum(increase(token_expirations_total{", "/ sum(increase(token_refresh_calls_total{"))
    with pytest.raises(ScenarioError, match=r"s.yaml:3: faults.0.gate: gate 'single-refresh': no effect"):
        resolve(scenario, plan, wl.derive(plan), seed_covers=True, source=source)


@pytest.mark.parametrize(("push", "extra"), [(2.0, 1.1), (1.5, 0.575)])
def test_a_ratio_of_counters_is_broken_by_more_events_of_its_numerator(push: float, extra: float) -> None:
    # single-refresh: refresh calls per expiration <= 1.05. Pushed to push x 1.05 calls per
    # expiration: in the seed's model, that many extra refreshes per expiration.
    plan = load_plan(SEED)
    workload = wl.derive(plan)
    gate = next(g for g in plan.phase("staging").gates() if g.name == "single-refresh")
    effects = wl.gate_effects(plan, workload, gate, push)
    assert set(effects) == {"token_refresh_calls"}
    assert math.isclose(effects["token_refresh_calls"].rate_factor, push * 1.05)
    scenario, _ = parse_scenario_source(f"name: x\nfaults:\n  - {{phase: staging, gate: single-refresh, push: {push}}}\n")
    fault = resolve(scenario, plan, workload, seed_covers=True).scenario.faults[0]
    assert math.isclose(fault.extra_refreshes_per_expiration, extra)


@pytest.mark.parametrize(("phase", "gate", "kind"), [
    ("staging", "zero-auth-errors", "session_not_active_per_s"),
    ("staging", "token-not-active", "token_not_active_per_s"),
])
def test_a_refresh_error_fault_is_of_the_type_its_gate_reads_and_breaks_every_type_alone(
        phase: str, gate: str, kind: str) -> None:
    # "Zero authentication errors" reads refresh errors of every type, the token-not-active
    # trigger one type: a session the server ended breaks the criterion without the trigger.
    plan = load_plan(SEED)
    scenario, _ = parse_scenario_source(f"name: x\nfaults:\n  - {{phase: {phase}, gate: {gate}, push: 2}}\n")
    fault = resolve(scenario, plan, wl.derive(plan), seed_covers=True).scenario.faults[0]
    other = ({"session_not_active_per_s", "token_not_active_per_s"} - {kind}).pop()
    assert getattr(fault, kind) > 0 and getattr(fault, other) == 0


def test_an_error_counter_is_broken_by_its_share_of_requests() -> None:
    plan = load_plan_text(ORDERS.read_text().replace(
        "  p95_seconds:", "  failures:\n    query: sum(increase(order_failures_total{pod=~\"{{pods}}\"}[{{window}}]))\n"
        "  p95_seconds:").replace(
        "      - {name: p95-within-range,", "      - {name: no-failures, metric: failures, kind: zero}\n"
        "      - {name: p95-within-range,"))
    workload = wl.derive(plan)
    failures = workload.family("order_failures_total")
    assert failures is not None and failures.kind is wl.Kind.COUNTER
    assert workload.event_rate(failures) == 0.0  # read by a zero gate: none when healthy
    gate = next(g for g in plan.phase("canary-5pct").success if g.name == "no-failures")
    effect = wl.gate_effects(plan, workload, gate, 2.0)["order_failures"]
    assert workload.event_rate(failures, effect.error_share) == pytest.approx(4.0)  # 2 % of 200/s


def test_rehearsal_names_come_from_the_plan(orders) -> None:
    assert default_image(orders) == "registry.example.com/shop/orders:1.6.0"
    assert default_image(load_plan(SEED)) == "registry.example.com/bodhi/bodhi-server:1.6.0"
    options = seed_options(orders)
    assert (options["namespaces"], options["deployment"], options["container"], options["replicas"]) == (
        ("shop",), "orders-api", "orders", {"shop": 8})
    assert "bodhi" not in repr(options).lower() and "token" not in repr(options).lower()


# --- the per-pod app --------------------------------------------------------------------


def test_every_pod_of_both_tracks_exports_the_derived_family_and_5xx_children_appear_on_the_first_5xx(
        orders, orders_workload) -> None:
    tracks = [TrackObservation("shop", "orders-api", "stable", "registry.example.com/shop/orders:1.5.0", 3, True,
                               "canary-5pct"),
              TrackObservation("shop", "orders-api", "canary", default_image(orders), 1, True, "canary-5pct")]
    scenario, source = parse_scenario_source(
        "name: errors\nfaults:\n  - {metric: http_server_requests_seconds, error_share: 0.5}\n", "s.yaml")
    resolved = resolve(scenario, orders, orders_workload, seed_covers=False, source=source)
    app = SyntheticApp(lambda: pods_of(tracks), default_image(orders), scenario, FakeClock(),
                       workload=orders_workload, resolved=resolved, seed=3)
    app.tick(0.0)
    pods = pods_of(tracks)
    canary = next(p for p in pods if "-canary-" in p.name)
    # Before any request: the labelled children do not exist yet, not even at 0.
    registry = app.registry("shop", canary.name)
    assert registry is not None
    assert registry.get_sample_value(f"{FAMILY}_count", {"status": "500", "uri": "/orders"}) is None
    app.tick(1.0)
    for pod in pods:
        registry = app.registry("shop", pod.name)
        assert registry is not None
        ok = registry.get_sample_value(f"{FAMILY}_count", {"status": "200", "uri": "/orders"})
        assert ok is not None and ok > 50
    registry = app.registry("shop", canary.name)
    assert registry is not None
    errors = registry.get_sample_value(f"{FAMILY}_count", {"status": "500", "uri": "/orders"}) or 0
    ok = registry.get_sample_value(f"{FAMILY}_count", {"status": "200", "uri": "/orders"}) or 0
    assert 0.35 < errors / (errors + ok) < 0.65


def test_a_plan_without_track_pods_regex_still_derives(orders) -> None:
    plan = load_plan_text(ORDERS.read_text().replace('pod=~"{{pods}}"', "{{selector}}"))
    assert [f.name for f in wl.derive(plan).families] == [FAMILY]


# --- end to end -------------------------------------------------------------------------


def test_a_bad_scenario_exits_2_naming_file_and_line_before_anything_starts() -> None:
    from phasegate.entry.cli import app

    result = CliRunner().invoke(app, ["rehearse", str(ORDERS), "--scenario", str(UNKNOWN_GATE)])
    assert result.exit_code == 2, result.output
    assert f"{UNKNOWN_GATE}:7: faults.0.gate" in " ".join(result.output.split())


@pytest.fixture
def rehearse_orders(prefect_api):
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.entry.rehearse import run_in
    from phasegate.rehearsal.world import world

    def run(scenario: str):
        with open("/dev/null", "w") as devnull, world(load_plan(ORDERS), scenario=scenario, speed=7200.0,
                                                       notifier=ConsoleNotifier(file=devnull)) as w:
            report = run_in(w, ORDERS)
            canary = w.emulator.store.find("apps/deployments", "shop", "orders-api-canary")
            stable = w.emulator.store.get("apps/deployments", "shop", "orders-api")
        return report, canary, stable

    return run


@pytest.mark.slow
def test_the_spring_plan_rehearses_healthy_to_promoted(rehearse_orders) -> None:
    report, canary, stable = rehearse_orders("healthy")
    assert report["outcome"] == "promoted", [(p["name"], p["reason"]) for p in report["phases"]]
    assert [p["name"] for p in report["phases"]] == ["canary-5pct", "canary-25pct", "full"]
    assert canary is None
    container = stable["spec"]["template"]["spec"]["containers"][0]
    assert (container["name"], container["image"]) == ("orders", "registry.example.com/shop/orders:1.6.0")
    assert stable["spec"]["replicas"] == 8


@pytest.mark.slow
def test_a_p95_fault_in_the_plans_language_rolls_back_by_that_triggers_strategy(rehearse_orders) -> None:
    report, canary, stable = rehearse_orders(str(P95_FAULT))
    assert report["outcome"] == "rolled_back"
    rb = report["rollback"]
    assert (rb["strategy"], rb["phase"], rb["gates"]) == ("canary_only", "canary-5pct", ["p95-ratio"])
    assert rb["ok"]
    assert canary is None
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/orders:1.5.0"


@pytest.mark.slow
def test_an_error_fault_at_full_rolls_back_with_a_full_undo(rehearse_orders) -> None:
    report, _canary, stable = rehearse_orders(str(ERRORS_AT_FULL))
    assert report["outcome"] == "rolled_back"
    rb = report["rollback"]
    assert (rb["strategy"], rb["phase"], rb["gates"]) == ("full_undo", "full", ["error-rate"])
    assert rb["ok"]
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/orders:1.5.0"
