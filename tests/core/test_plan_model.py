"""The plan model and its helpers: durations, templates, seed plan facts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phasegate import templates
from phasegate.durations import format_duration, parse_duration
from phasegate.errors import PlanError
from phasegate.plan import GateKind, Strategy, load_plan_text
from tests.core.builders import SEED_PLAN_PATH, seed_plan


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("48h", 172800), ("1w", 604800), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800)],
)
def test_durations_parse_as_people_write_them(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "1y", "m5", "5m5", "-5m", "1M"])
def test_ambiguous_or_foreign_durations_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips(ms):
    td = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(td)) == td


def test_template_values_are_escaped_so_a_name_cannot_inject_promql():
    rendered = templates.render('x{deployment="{{deployment}}"}', {"deployment": 'a"} or vector(1) #'})
    assert rendered == 'x{deployment="a\\"} or vector(1) #"}'


def test_template_window_must_be_a_duration_literal():
    with pytest.raises(ValueError, match="window"):
        templates.render("rate(x[{{window}}])", {"window": "5m] or vector(1)"})


def test_seed_plan_encodes_every_seed_threshold():
    plan = seed_plan()
    assert [p.name for p in plan.phases] == ["staging", "canary-10pct", "canary-50pct", "full"]
    assert [p.canary_share for p in plan.phases] == [100, 10, 50, 100]
    canary = plan.phase("canary-10pct")
    bounds = {t.name: (t.kind, t.op, t.threshold, t.rollback) for t in canary.triggers}
    assert bounds == {
        "token-not-active": (GateKind.ZERO, "<", 0, Strategy.CANARY_ONLY),
        "p99-latency-increase": (GateKind.DELTA, "<=", 50, Strategy.CANARY_ONLY),
        "error-rate-increase": (GateKind.DELTA, "<=", 0.001, Strategy.CANARY_ONLY),
        "lock-timeout-rate": (GateKind.ABSOLUTE, "<=", 0.01, Strategy.CANARY_ONLY),
    }
    assert plan.phase("canary-50pct").triggers == canary.triggers  # "Same as Phase 2"
    assert {g.name: g.threshold for g in plan.phase("full").success}["lock-success"] == 0.9995
    assert plan.feature_flag.env == "ENABLE_TOKEN_REFRESH_LOCKING"
    assert (plan.feature_flag.configmap.name, plan.feature_flag.configmap.key) == (
        "bodhi-config",
        "enable_token_refresh_locking",
    )
    assert plan.signoff.incident == "TOKEN-REFRESH-001"
    assert plan.signoff.after == timedelta(weeks=4)
    assert [a.name for a in plan.alerts] == ["TokenRefreshLockTimeout", "TokenNotActiveError", "LockAcquisitionLatencyHigh"]
    assert [p.title for p in plan.dashboard.panels] == ["Error Rate", "Lock Metrics", "Latency", "Double-Check Effectiveness"]
    assert len(plan.checklist.items) == 7
    assert {s for p in plan.phases for t in p.triggers for s in [t.rollback]} == set(Strategy)


def test_every_seed_template_selects_each_tracks_pods_by_name():
    from phasegate import gates

    plan = seed_plan()
    for metric in plan.metrics.values():
        for track in ("canary", "stable"):
            q = templates.render(metric.query, gates.variables(plan, gates.Scope("bodhi", "bodhi-server", track), track,
                                                               "5m"))
            assert "{{" not in q and f'pod=~"{gates.pods_regex(gates.workload("bodhi-server", track))}"' in q
            assert "track=" not in q and "deployment=" not in q


def test_every_structural_problem_is_reported_at_once():
    text = SEED_PLAN_PATH.read_text().replace("canary_share: 10\n", "canary_share: ten\n").replace(
        "threshold: 0.999}", "threshold: oops}"
    )
    with pytest.raises(PlanError) as info:
        load_plan_text(text, "seed.yaml")
    assert len(info.value.problems) >= 2
    assert all(p.startswith("seed.yaml:") for p in info.value.problems)
