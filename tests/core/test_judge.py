"""The canary judge: known answers for the Mann-Whitney classifier and Kayenta's scoring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.judge import (
    Classification,
    Direction,
    JudgeConfig,
    MetricConfig,
    MetricResult,
    NanStrategy,
    Verdict,
    classify,
    judge,
    score,
)

RNG_SEED = 20240601
N = 500


def normal(mean: float, sd: float = 10.0, n: int = N, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


def metric(name: str = "latency", **kw: object) -> MetricConfig:
    return MetricConfig(name=name, **kw)  # type: ignore[arg-type]


def result(name: str, classification: Classification, group: str = "default", **kw: object) -> MetricResult:
    return MetricResult(name=name, group=group, classification=classification, reason="", **kw)  # type: ignore[arg-type]


def test_identical_distributions_pass() -> None:
    r = classify(normal(100, seed=1), normal(100, seed=2), metric())
    assert r.classification is Classification.PASS
    assert r.lower is not None and r.upper is not None and r.lower <= 0 <= r.upper


def test_a_3_percent_increase_at_n500_is_caught() -> None:
    r = classify(normal(103, seed=1), normal(100, seed=2), metric())
    assert r.classification is Classification.HIGH
    assert r.relative_effect == pytest.approx(0.03, abs=0.015)
    assert r.p_value is not None and r.p_value < 0.02


def test_a_3_percent_decrease_is_low() -> None:
    assert classify(normal(97, seed=1), normal(100, seed=2), metric()).classification is Classification.LOW


def test_a_shift_within_tolerance_passes() -> None:
    r = classify(normal(103, seed=1), normal(100, seed=2), metric(tolerance=0.05))
    assert r.classification is Classification.PASS and r.shift == "increase"


def test_direction_increase_ignores_a_decrease() -> None:
    r = classify(normal(90, seed=1), normal(100, seed=2), metric(direction=Direction.INCREASE))
    assert r.classification is Classification.PASS and r.shift == "decrease"


def test_direction_decrease_ignores_an_increase() -> None:
    r = classify(normal(110, seed=1), normal(100, seed=2), metric(direction=Direction.DECREASE))
    assert r.classification is Classification.PASS


def test_constant_equal_data_passes_without_dividing_by_zero() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        r = classify([0.0] * N, [0.0] * N, metric())
    assert r.classification is Classification.PASS and r.relative_effect == 0


def test_errors_appearing_on_a_zero_baseline_are_an_infinite_relative_increase() -> None:
    canary = [0.0] * 470 + [1.0] * 30
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        r = classify(canary, [0.0] * N, metric(tolerance=10.0))
    # The Hodges-Lehmann median of mostly-zero differences is 0; the mean difference is not.
    assert r.classification is Classification.HIGH
    assert r.relative_effect == float("inf")
    assert "from zero" in r.reason


def test_constant_but_different_samples_are_a_change() -> None:
    assert classify([2.0] * 50, [1.0] * 50, metric()).classification is Classification.HIGH


def test_no_samples_on_either_side_is_no_data() -> None:
    assert classify([], [1.0, 2.0], metric()).classification is Classification.NODATA
    assert classify([1.0], [], metric()).classification is Classification.NODATA


def test_nan_removed_by_default() -> None:
    r = classify([1.0, float("nan"), 1.0], [1.0, 1.0, float("inf")], metric())
    assert (r.canary_n, r.baseline_n, r.classification) == (2, 2, Classification.PASS)


def test_nan_replaced_with_zero_when_asked() -> None:
    r = classify([float("nan")] * 40, [0.0] * 40, metric(nan_strategy=NanStrategy.REPLACE))
    assert r.canary_n == 40 and r.classification is Classification.PASS


def test_large_samples_are_thinned_and_still_judged() -> None:
    r = classify(normal(103, n=20_000, seed=1), normal(100, n=20_000, seed=2), metric(), max_samples=500)
    assert r.classification is Classification.HIGH


# --- scoring ---------------------------------------------------------------------------


def test_all_passing_scores_100_successful() -> None:
    out = score([result("a", Classification.PASS), result("b", Classification.PASS)])
    assert (out.score, out.verdict) == (100.0, Verdict.SUCCESSFUL)


def test_a_failing_critical_metric_scores_0() -> None:
    out = score([result("a", Classification.HIGH, critical=True)] + [result(f"p{i}", Classification.PASS) for i in range(9)])
    assert (out.score, out.verdict) == (0.0, Verdict.FAILED)
    assert "critical metric failed: a" in out.reason


def test_half_no_data_scores_0() -> None:
    out = score([result("a", Classification.NODATA), result("b", Classification.PASS)])
    assert (out.score, out.verdict) == (0.0, Verdict.FAILED)


def test_no_data_on_a_must_have_data_metric_scores_0() -> None:
    results = [result("a", Classification.NODATA, must_have_data=True)] + [
        result(f"p{i}", Classification.PASS) for i in range(9)
    ]
    assert score(results).score == 0.0


def test_no_data_below_half_is_left_out_of_the_group_score() -> None:
    results = [result("a", Classification.NODATA)] + [result(f"p{i}", Classification.PASS) for i in range(3)]
    assert score(results).score == 100.0


def test_group_weights_and_the_marginal_band() -> None:
    results = [
        result("latency", Classification.PASS, group="latency"),
        result("errors", Classification.HIGH, group="errors"),
    ]
    assert score(results, JudgeConfig(group_weights={"latency": 80, "errors": 20})).verdict is Verdict.INCONCLUSIVE
    assert score(results, JudgeConfig(group_weights={"latency": 96, "errors": 4})).verdict is Verdict.SUCCESSFUL
    assert score(results, JudgeConfig(group_weights={"latency": 50, "errors": 50})).verdict is Verdict.FAILED


def test_judge_classifies_and_scores_named_samples() -> None:
    out = judge(
        {"latency": (normal(103, seed=1), normal(100, seed=2)), "errors": ([0.0] * N, [0.0] * N)},
        [metric("latency", group="perf"), metric("errors", group="errors", critical=True)],
    )
    assert [r.classification for r in out.metrics] == [Classification.HIGH, Classification.PASS]
    assert out.group_scores == {"perf": 0.0, "errors": 100.0}
    assert (out.score, out.verdict) == (50.0, Verdict.FAILED)


def test_metric_without_samples_is_no_data() -> None:
    out = judge({}, [metric("latency")])
    assert out.metrics[0].classification is Classification.NODATA and out.score == 0


def test_nothing_to_judge_is_an_error() -> None:
    with pytest.raises(ValueError, match="no metrics"):
        score([])


# --- properties ------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=60))
def test_a_sample_judged_against_itself_passes(xs: list[float]) -> None:
    assert classify(xs, xs, metric()).classification is Classification.PASS


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=3, max_size=40), st.lists(finite, min_size=3, max_size=40))
def test_swapping_canary_and_baseline_swaps_high_and_low(a: list[float], b: list[float]) -> None:
    swap = {Classification.HIGH: Classification.LOW, Classification.LOW: Classification.HIGH,
            Classification.PASS: Classification.PASS}
    assert classify(b, a, metric()).classification is swap[classify(a, b, metric()).classification]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(Classification)), min_size=1, max_size=20), st.booleans())
def test_score_is_between_0_and_100(classes: list[Classification], critical: bool) -> None:
    results = [result(f"m{i}", c, group=f"g{i % 3}", critical=critical and i == 0) for i, c in enumerate(classes)]
    assert 0.0 <= score(results).score <= 100.0
