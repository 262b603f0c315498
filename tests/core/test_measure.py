"""measure.collect: one concurrent round, provider errors kept as data."""

from __future__ import annotations

import threading

import pytest

from phasegate import errors, measure


class FakeProvider:
    """Answers from a table: a float, or an exception to raise."""

    def __init__(self, answers: dict[str, float | Exception], barrier: threading.Barrier | None = None) -> None:
        self.answers = answers
        self.barrier = barrier

    def query(self, promql: str) -> float:
        if self.barrier is not None:
            # Every query must be in flight at once for the barrier to open.
            self.barrier.wait(timeout=5)
        answer = self.answers[promql]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        return []

    def is_online(self) -> bool:
        return True


def test_round_runs_all_queries_at_once() -> None:
    n = 12
    provider = FakeProvider({f"q{i}": float(i) for i in range(n)}, barrier=threading.Barrier(n))
    samples = measure.collect(provider, {i: f"q{i}" for i in range(n)})
    assert {k: s.value for k, s in samples.items()} == {i: float(i) for i in range(n)}


def test_round_keeps_the_callers_keys_and_order() -> None:
    provider = FakeProvider({"a": 1.0, "b": 2.0})
    samples = measure.collect(provider, {("err", "canary"): "b", ("err", "stable"): "a"})
    assert list(samples) == [("err", "canary"), ("err", "stable")]


@pytest.mark.parametrize(
    ("error", "no_data", "rejected", "text"),
    [
        (errors.NoData("query returned NaN"), True, False, "NaN"),
        (errors.QueryRejected("parse error"), False, True, "parse error"),
        (errors.ProviderUnavailable("connection refused"), False, False, "ProviderUnavailable: connection refused"),
        (errors.MultipleSeries("2 series"), False, False, "MultipleSeries: 2 series"),
        (RuntimeError("provider bug"), False, False, "unexpected RuntimeError: provider bug"),
    ],
)
def test_provider_errors_become_sample_data_not_exceptions(
    error: Exception, no_data: bool, rejected: bool, text: str
) -> None:
    samples = measure.collect(FakeProvider({"ok": 1.0, "bad": error}), {"ok": "ok", "bad": "bad"})
    bad = samples["bad"]
    assert (bad.value, bad.no_data, bad.rejected) == (None, no_data, rejected)
    assert text in (bad.error or "")
    assert not bad.ok
    assert samples["ok"].value == 1.0 and samples["ok"].error is None


def test_sample_records_elapsed_time() -> None:
    sample = measure.sample(FakeProvider({"q": 1.0}), "q")
    assert sample.elapsed >= 0 and sample.started > 0


def test_empty_round_is_empty() -> None:
    assert measure.collect(FakeProvider({}), {}) == {}


def test_one_worker_runs_in_turn_without_a_pool() -> None:
    samples = measure.collect(FakeProvider({"a": 1.0, "b": 2.0}), {"a": "a", "b": "b"}, max_workers=1)
    assert [s.value for s in samples.values()] == [1.0, 2.0]
