"""Review and comparison reports: markdown tables and real PNG charts (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from phasegate import errors
from phasegate.plan import RolloutPlan, load_plan
from phasegate.render.report import write_review_report
from phasegate.review import DAY, Release, due_reviews, review_due

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"
P = 1_700_000_000.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class WavyProvider:
    """Healthy values with a daily wave; token errors only where ``errors_at`` says."""

    def __init__(self, errors_at: float | None = None, latency: float = 90.0, missing: str | None = None) -> None:
        self.errors_at, self.latency, self.missing = errors_at, latency, missing

    def _value(self, promql: str, t: float) -> float:
        if self.missing and self.missing in promql:
            raise errors.NoData(promql)
        wave = math.sin(t / DAY * 2 * math.pi)
        if "token_not_active" in promql:
            return 2.0 if self.errors_at is not None and abs(t - self.errors_at) < 1 else 0.0
        if "concurrency_lock_acquisitions_total" in promql:
            return 0.9999 + 0.00005 * wave
        if "lock_acquisition_duration" in promql:
            return 25 + 5 * wave
        return self.latency + 3 * wave

    def query(self, promql: str) -> float:
        raise AssertionError("not used")

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        n = int((end - start) / step + 1e-9)
        return [(start + i * step, self._value(promql, start + i * step)) for i in range(n + 1)]

    def is_online(self) -> bool:
        return True


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


def _release(namespace: str = "bodhi", promoted_at: float = P) -> Release:
    return Release(namespace, "bodhi-server", "v2", promoted_at)


def _daily(plan: RolloutPlan, day: int):
    assert plan.reviews is not None
    return due_reviews(plan.reviews, P, P + day * DAY + 60, cadence="daily")[0]


def test_review_report_has_a_row_per_gate_with_value_bound_and_outcome(plan: RolloutPlan, tmp_path: Path) -> None:
    result = review_due(plan, _daily(plan, 2), _release(), WavyProvider())
    report = write_review_report(plan, result, WavyProvider(), tmp_path)
    assert "**Verdict: PASSED**" in report.markdown
    assert "| Gate | Value | Bound | Outcome |" in report.markdown
    assert "| lock-p99 | " in report.markdown and "| value < 100 | ✅ Successful |" in report.markdown
    assert report.path.read_text() == report.markdown


def test_review_report_draws_one_png_chart_per_gate_metric(plan: RolloutPlan, tmp_path: Path) -> None:
    result = review_due(plan, _daily(plan, 2), _release(), WavyProvider())
    report = write_review_report(plan, result, WavyProvider(), tmp_path)
    assert len(report.charts) == 4
    for chart in report.charts:
        data = chart.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"]({chart.name})" in report.markdown


def test_failed_review_names_the_gate_and_the_reason(plan: RolloutPlan, tmp_path: Path) -> None:
    provider = WavyProvider(errors_at=P + 3 * DAY)
    result = review_due(plan, _daily(plan, 3), _release(), provider)
    report = write_review_report(plan, result, provider, tmp_path)
    assert "**Verdict: NOT PASSED (Failed)**" in report.markdown
    assert "- zero-token-not-active: Failed — 1 failed (limit 0): 2 > 0" in report.markdown


def test_summary_report_shows_the_bad_day_in_a_day_by_day_grid(plan: RolloutPlan, tmp_path: Path) -> None:
    assert plan.reviews is not None
    provider = WavyProvider(errors_at=P + 3 * DAY)
    due = due_reviews(plan.reviews, P, P + 7 * DAY + 60, cadence="weekly-summary")[0]
    report = write_review_report(plan, review_due(plan, due, _release(), provider), provider, tmp_path)
    assert "(1/7 days failed)" in report.markdown
    grid = report.markdown.split("## Day by day")[1].splitlines()
    third = next(line for line in grid if line.startswith("| 3 "))
    assert third.split("|")[2].strip() == "❌"


def test_a_chart_that_cannot_be_queried_is_left_out_and_said_so(plan: RolloutPlan, tmp_path: Path) -> None:
    provider = WavyProvider(missing="lock_acquisition_duration")
    result = review_due(plan, _daily(plan, 2), _release(), provider)
    report = write_review_report(plan, result, provider, tmp_path)
    assert len(report.charts) == 3
    assert "chart lock_acquisition_p99_ms left out" in report.markdown
    assert "⚠️ Inconclusive" in report.markdown
