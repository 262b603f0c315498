"""evaluate / assess / worst: the seed's thresholds decided correctly, one rule per test."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phasegate.analysis import Outcome, Reading, assess, evaluate, worst
from tests.core.builders import gate, m, seed_plan

PLAN = seed_plan()
CANARY = PLAN.phase("canary-10pct")
P99_TRIGGER = next(t for t in CANARY.triggers if t.name == "p99-latency-increase")
P99_CRITERION = next(g for g in CANARY.success if g.name == "latency-within-range")
ERROR_RATE_TRIGGER = next(t for t in CANARY.triggers if t.name == "error-rate-increase")
LOCK_TIMEOUT_TRIGGER = next(t for t in CANARY.triggers if t.name == "lock-timeout-rate")
TOKEN_TRIGGER = next(t for t in CANARY.triggers if t.name == "token-not-active")
LOCK_SUCCESS = next(g for g in CANARY.success if g.name == "lock-success")
FULL_LOCK_SUCCESS = next(g for g in PLAN.phase("full").success if g.name == "lock-success")
LOCK_P99 = next(g for g in PLAN.phase("staging").success if g.name == "lock-p99")


def outcome(g, value, baseline=None):
    base = None if baseline is None else Reading(baseline)
    return evaluate(g, Reading(value), base).outcome


@pytest.mark.parametrize(
    ("canary_ms", "stable_ms", "trigger", "criterion"),
    [
        (151.0, 100.0, Outcome.FAILED, Outcome.FAILED),  # +51 ms: rollback trigger
        (150.0, 100.0, Outcome.SUCCESSFUL, Outcome.FAILED),  # +50 ms is not "> 50 ms"
        (149.0, 100.0, Outcome.SUCCESSFUL, Outcome.FAILED),  # +49 ms: no trigger, fails < 20 ms
        (130.0, 100.0, Outcome.SUCCESSFUL, Outcome.FAILED),  # +30 ms: the marginal case
        (119.0, 100.0, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL),
        (90.0, 100.0, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL),  # faster is fine
    ],
)
def test_p99_latency_increase_against_trigger_and_success_criterion(canary_ms, stable_ms, trigger, criterion):
    assert outcome(P99_TRIGGER, canary_ms, stable_ms) is trigger
    assert outcome(P99_CRITERION, canary_ms, stable_ms) is criterion


@pytest.mark.parametrize(
    ("canary", "stable", "expected"),
    [(0.0021, 0.001, Outcome.FAILED), (0.0019, 0.001, Outcome.SUCCESSFUL), (0.0, 0.0, Outcome.SUCCESSFUL)],
)
def test_error_rate_increase_over_a_tenth_of_a_percent_triggers(canary, stable, expected):
    assert outcome(ERROR_RATE_TRIGGER, canary, stable) is expected


@pytest.mark.parametrize(("rate", "expected"), [(0.011, Outcome.FAILED), (0.01, Outcome.SUCCESSFUL), (0.0, Outcome.SUCCESSFUL)])
def test_lock_timeout_rate_over_one_percent_triggers(rate, expected):
    assert outcome(LOCK_TIMEOUT_TRIGGER, rate) is expected


@pytest.mark.parametrize(("errors", "expected"), [(0.0, Outcome.SUCCESSFUL), (1.0, Outcome.FAILED), (0.2, Outcome.FAILED)])
def test_any_token_not_active_error_breaks_the_zero_gate(errors, expected):
    assert outcome(TOKEN_TRIGGER, errors) is expected


@pytest.mark.parametrize(
    ("g", "rate", "expected"),
    [
        (LOCK_SUCCESS, 0.9991, Outcome.SUCCESSFUL),
        (LOCK_SUCCESS, 0.999, Outcome.FAILED),  # "> 99.9%" is strict
        (FULL_LOCK_SUCCESS, 0.9993, Outcome.FAILED),  # full rollout needs > 99.95%
        (FULL_LOCK_SUCCESS, 0.9996, Outcome.SUCCESSFUL),
    ],
)
def test_lock_acquisition_success_rate_thresholds_per_phase(g, rate, expected):
    assert outcome(g, rate) is expected


def test_lock_acquisition_p99_over_100ms_fails():
    assert outcome(LOCK_P99, 101.0) is Outcome.FAILED
    assert outcome(LOCK_P99, 99.0) is Outcome.SUCCESSFUL


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_no_data_is_inconclusive_never_successful(value):
    assert outcome(TOKEN_TRIGGER, value) is Outcome.INCONCLUSIVE
    assert outcome(P99_TRIGGER, value, 100.0) is Outcome.INCONCLUSIVE


def test_missing_stable_baseline_is_inconclusive():
    assert evaluate(P99_TRIGGER, Reading(120.0), None).outcome is Outcome.INCONCLUSIVE
    assert outcome(P99_TRIGGER, 120.0, math.nan) is Outcome.INCONCLUSIVE


def test_provider_error_is_recorded_as_error_not_raised():
    measured = evaluate(P99_TRIGGER, Reading(error="connection refused"), Reading(100.0))
    assert measured.outcome is Outcome.ERROR
    assert "connection refused" in measured.message


def test_baseline_error_is_error():
    assert evaluate(P99_TRIGGER, Reading(120.0), Reading(error="timeout")).outcome is Outcome.ERROR


def test_ratio_against_zero_baseline():
    g = gate(kind="ratio", op="<=", threshold=1.5)
    assert outcome(g, 0.0, 0.0) is Outcome.SUCCESSFUL  # 0/0: no change
    assert outcome(g, 0.5, 0.0) is Outcome.FAILED  # anything over nothing is unbounded
    assert outcome(g, 1.4, 1.0) is Outcome.SUCCESSFUL


def test_measurement_records_values_bound_and_query():
    measured = evaluate(P99_TRIGGER, Reading(151.0), Reading(100.0), at=42.0, query="q")
    assert (measured.value, measured.baseline, measured.compared) == (151.0, 100.0, 51.0)
    assert measured.bound == "value − stable <= 50"
    assert (measured.at, measured.query) == (42.0, "q")
    assert "51 breaks" in measured.message


def test_worst_follows_argo_severity_order():
    assert worst([Outcome.SUCCESSFUL, Outcome.INCONCLUSIVE]) is Outcome.INCONCLUSIVE
    assert worst([Outcome.INCONCLUSIVE, Outcome.ERROR]) is Outcome.ERROR
    assert worst([Outcome.ERROR, Outcome.FAILED, Outcome.SUCCESSFUL]) is Outcome.FAILED


def test_worst_of_nothing_is_inconclusive():
    assert worst([]) is Outcome.INCONCLUSIVE


# --- assess: Argo's limits ---------------------------------------------------------------

S, F, I, E = Outcome.SUCCESSFUL, Outcome.FAILED, Outcome.INCONCLUSIVE, Outcome.ERROR


def test_assess_failure_limit_zero_fails_on_first_failure():
    assert assess(gate(), [m(S), m(F), m(S)]).outcome is F


def test_assess_failure_limit_tolerates_up_to_limit():
    assert assess(gate(failure_limit=1), [m(S), m(F), m(S)]).outcome is S
    assert assess(gate(failure_limit=1), [m(F), m(F), m(S)]).outcome is F


def test_assess_inconclusive_limit_zero_holds_on_first_no_data():
    assert assess(gate(), [m(S), m(I), m(S)]).outcome is I


def test_assess_consecutive_error_limit_four_tolerates_four_errors():
    assert assess(gate(), [m(S), m(E), m(E), m(E), m(E), m(S)]).outcome is S
    assert assess(gate(), [m(S), *[m(E)] * 5]).outcome is E


def test_assess_errors_separated_by_success_do_not_accumulate():
    assert assess(gate(), [m(E), m(E), m(E), m(S), m(E), m(E), m(E), m(S)]).outcome is S


def test_assess_never_passes_on_trailing_errors_within_limit():
    assert assess(gate(), [m(S), m(E)]).outcome is I


def test_assess_nothing_measured_is_inconclusive():
    assert assess(gate(), []).outcome is I


def test_error_limit_once_exceeded_is_not_undone_by_a_later_measurement():
    errors = [m(E)] * 5  # limit 4
    tolerant = gate(failure_limit=2)
    assert assess(tolerant, errors).outcome is E
    assert assess(tolerant, [*errors, m(F)]).outcome is E  # one failure within its limit
    assert assess(tolerant, [*errors, m(S), m(S)]).outcome is E
    assert assess(gate(), [*errors, m(F)]).outcome is F  # a failure past its limit outranks it


@given(st.lists(st.sampled_from(list(Outcome)), max_size=20), st.sampled_from(list(Outcome)))
def test_adding_a_failed_measurement_never_improves_the_outcome(history, _):
    g = gate(failure_limit=2, inconclusive_limit=1)
    before = assess(g, [m(o) for o in history]).outcome
    after = assess(g, [m(o) for o in [*history, F]]).outcome
    assert after.severity >= before.severity or after is F


@given(st.lists(st.sampled_from(list(Outcome)), max_size=20))
def test_any_failure_past_the_limit_is_failed_whatever_else_happened(history):
    g = gate(failure_limit=1)
    outcome_ = assess(g, [m(o) for o in history]).outcome
    assert (outcome_ is F) == (history.count(F) > 1)


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_evaluate_is_total_and_never_successful_without_finite_data(value, base):
    result = evaluate(P99_TRIGGER, Reading(value), Reading(base))
    if not (math.isfinite(value) and math.isfinite(base)):
        assert result.outcome is Outcome.INCONCLUSIVE
