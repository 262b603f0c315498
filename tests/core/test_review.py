"""Review cadence, windows and verdicts (pure: a fake provider stands in for Prometheus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegate import errors
from phasegate.analysis import Outcome
from phasegate.plan import RolloutPlan, load_plan
from phasegate.record import ANN_IMAGE, ANN_PROMOTED_AT, ANN_SIGNED_OFF
from phasegate.review import (
    DAY,
    Release,
    Window,
    due_reviews,
    parse_time,
    periods,
    review_due,
    running_mismatch,
    signoff_due,
    signoff_review,
)

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"
HOUR, WEEK = 3600.0, 7 * 86400.0
P = 1_700_000_000.0  # promotion time


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


def _release(**kw: object) -> Release:
    return Release(**{"namespace": "bodhi", "deployment": "bodhi-server", "image": "v2", "promoted_at": P, **kw})


def _due(plan: RolloutPlan, now: float, cadence: str) -> list[tuple[int, Window]]:
    assert plan.reviews is not None
    return [(d.period, d.window) for d in due_reviews(plan.reviews, P, now, cadence=cadence)]


class FakeProvider:
    """Answers by metric name fragment; ``bad`` maps (fragment, window end) to a value."""

    def __init__(self, values: dict[str, float], bad: dict[tuple[str, float], float] | None = None) -> None:
        self.values, self.bad, self.calls = values, bad or {}, []

    def _value(self, promql: str, at: float) -> float:
        for (fragment, when), value in self.bad.items():
            if fragment in promql and when == at:
                return value
        for fragment, value in self.values.items():
            if fragment in promql:
                return value
        raise errors.NoData(promql)

    def query(self, promql: str) -> float:
        raise AssertionError("reviews read past windows with query_range")

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        self.calls.append((promql, start, end, step))
        points, t = [], start
        while t <= end + 1e-6:
            points.append((t, self._value(promql, t)))
            t += step
        return points

    def is_online(self) -> bool:
        return True


HEALTHY = {
    'type="token_not_active"': 0.0,
    "concurrency_lock_acquisitions_total": 0.9999,
    "token_refresh_lock_acquisition_duration_ms_bucket": 25.0,
    "api_response_time_ms_bucket": 90.0,
}


def test_hourly_reviews_cover_day_one_only(plan: RolloutPlan) -> None:
    assert _due(plan, P + 90 * 60, "hourly") == [(1, Window(P, P + HOUR))]
    assert _due(plan, P + 23 * HOUR + 60, "hourly") == [(23, Window(P + 22 * HOUR, P + 23 * HOUR))]
    assert _due(plan, P + 24 * HOUR + 60, "hourly")[0][0] == 24
    assert _due(plan, P + 25 * HOUR + 60, "hourly") == []


def test_nothing_is_due_before_the_first_period_ends(plan: RolloutPlan) -> None:
    assert _due(plan, P + 30 * 60, "hourly") == []
    assert _due(plan, P + 23 * HOUR, "daily") == []


def test_daily_reviews_run_through_week_one(plan: RolloutPlan) -> None:
    assert _due(plan, P + 3 * DAY + HOUR, "daily") == [(3, Window(P + 2 * DAY, P + 3 * DAY))]
    assert _due(plan, P + 7 * DAY + HOUR, "daily") == [(7, Window(P + 6 * DAY, P + 7 * DAY))]
    assert _due(plan, P + 8 * DAY + HOUR, "daily") == []


def test_a_daily_schedule_reviews_each_day_exactly_once_however_it_is_aligned(plan: RolloutPlan) -> None:
    runs = [P + 5 * HOUR + k * DAY for k in range(10)]  # a 05:00 cron, promotion at midnight
    reviewed = [p for now in runs for p, _ in _due(plan, now, "daily")]
    assert reviewed == [1, 2, 3, 4, 5, 6, 7]


def test_weekly_summary_covers_all_of_week_one(plan: RolloutPlan) -> None:
    assert _due(plan, P + WEEK + HOUR, "weekly-summary") == [(1, Window(P, P + WEEK))]
    assert _due(plan, P + 2 * WEEK + HOUR, "weekly-summary") == []


def test_bi_weekly_reviews_cover_weeks_two_to_four(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    cadence = next(c for c in plan.reviews.cadence if c.name == "bi-weekly")
    assert periods(cadence, P) == [Window(P + WEEK, P + 3 * WEEK), Window(P + 3 * WEEK, P + 4 * WEEK)]
    assert _due(plan, P + 3 * WEEK + HOUR, "bi-weekly") == [(1, Window(P + WEEK, P + 3 * WEEK))]
    assert _due(plan, P + 4 * WEEK + HOUR, "bi-weekly") == [(2, Window(P + 3 * WEEK, P + 4 * WEEK))]


def test_signoff_is_due_after_four_weeks_unless_already_signed(plan: RolloutPlan) -> None:
    assert plan.signoff is not None
    assert not signoff_due(plan.signoff, _release(), P + 4 * WEEK - 1)
    assert signoff_due(plan.signoff, _release(), P + 4 * WEEK)
    assert not signoff_due(plan.signoff, _release(signed_off=True), P + 5 * WEEK)


def test_release_is_read_from_annotations_in_unix_or_iso_time() -> None:
    found = Release.from_annotations("bodhi", "bodhi-server", {ANN_PROMOTED_AT: "2023-11-14T22:13:20Z", ANN_IMAGE: "v2"})
    assert found == _release()
    assert parse_time("1700000000.000") == P
    assert Release.from_annotations("bodhi", "x", {ANN_PROMOTED_AT: "yesterday"}) is None
    assert Release.from_annotations("bodhi", "x", {ANN_PROMOTED_AT: "1", ANN_SIGNED_OFF: "2024"}).signed_off  # type: ignore[union-attr]


def test_a_review_gate_is_measured_on_the_stable_track_over_the_review_window(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    provider = FakeProvider(HEALTHY)
    due = due_reviews(plan.reviews, P, P + 2 * DAY + HOUR, cadence="daily")[0]
    result = review_due(plan, due, _release(), provider)
    assert result.passed
    zero = next(c for c in provider.calls if "token_not_active" in c[0])
    assert 'pod=~"bodhi-server-[' in zero[0] and "bodhi-server-canary" not in zero[0] and "[1d]" in zero[0]
    assert zero[1] == zero[2] == P + 2 * DAY


def test_pre_deploy_baseline_is_the_same_query_over_an_equal_window_before_promotion(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    provider = FakeProvider(HEALTHY, bad={("api_response_time_ms_bucket", P + DAY): 150.0})
    due = due_reviews(plan.reviews, P, P + DAY + HOUR, cadence="daily")[0]
    result = review_due(plan, due, _release(), provider)
    latency = result.measurements["latency-unchanged"][0]
    assert (latency.value, latency.baseline, latency.outcome) == (150.0, 90.0, Outcome.FAILED)
    assert any(c[1] == c[2] == P and "[1d]" in c[0] and "api_response" in c[0] for c in provider.calls)


def test_token_not_active_errors_fail_the_review_and_say_so(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    provider = FakeProvider({**HEALTHY, 'type="token_not_active"': 3.0})
    due = due_reviews(plan.reviews, P, P + DAY + HOUR, cadence="daily")[0]
    result = review_due(plan, due, _release(), provider)
    assert result.outcome is Outcome.FAILED
    assert any(p.startswith("zero-token-not-active: Failed") for p in result.problems())


def test_missing_data_never_passes_a_review(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    provider = FakeProvider({k: v for k, v in HEALTHY.items() if "lock_acquisitions" not in k})
    due = due_reviews(plan.reviews, P, P + DAY + HOUR, cadence="daily")[0]
    assert review_due(plan, due, _release(), provider).outcome is Outcome.INCONCLUSIVE


def test_a_summary_is_measured_day_by_day(plan: RolloutPlan) -> None:
    assert plan.reviews is not None
    provider = FakeProvider(HEALTHY)
    due = due_reviews(plan.reviews, P, P + WEEK + HOUR, cadence="weekly-summary")[0]
    result = review_due(plan, due, _release(), provider)
    assert [len(m) for m in result.measurements.values()] == [7, 7, 7, 7]


def test_signoff_refuses_when_one_day_of_four_weeks_had_errors(plan: RolloutPlan) -> None:
    provider = FakeProvider(HEALTHY, bad={('type="token_not_active"', P + 12 * DAY): 1.0})
    result = signoff_review(plan, _release(), provider)
    assert result.outcome is Outcome.FAILED
    assert result.assessments["zero-token-not-active"].failed == 1
    assert result.assessments["zero-token-not-active"].measurements == 28


def test_signoff_passes_when_every_criterion_held_every_day(plan: RolloutPlan) -> None:
    assert signoff_review(plan, _release(), FakeProvider(HEALTHY)).passed


def test_a_review_is_refused_when_the_deployment_runs_another_image_than_the_record():
    release = Release("bodhi", "bodhi-server", "bodhi-server:1.6.0", 0.0)
    assert running_mismatch(release, "bodhi-server:1.6.0") is None
    assert "runs bodhi-server:1.5.0, not the promoted bodhi-server:1.6.0" in running_mismatch(release, "bodhi-server:1.5.0")
    assert "no release image" in running_mismatch(Release("bodhi", "bodhi-server", "", 0.0), "x:1")
