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
    MetricConfig,
    NanStrategy,
    classify,
    hodges_lehmann,
    wilcoxon_quantile,
)

RNG_SEED = 20240601
N = 500


def normal(mean: float, sd: float = 10.0, n: int = N, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


def metric(name: str = "latency", **kw: object) -> MetricConfig:
    return MetricConfig(name=name, **kw)  # type: ignore[arg-type]


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


# --- Kayenta's own cases (kayenta-mannwhitney MannWhitneySuite), tied out with R's wilcox.test ---

# "Tie out with R Version": 90 latency samples a side, heavily tied (0.5 steps).
KAYENTA_CONTROL = [
    1.5, 6.0, 5.0, 2.5, 2.5, 2.0, 2.0, 3.5, 3.0, 3.0, 3.0, 2.0, 3.0, 8.0, 4.0, 2.5, 3.0, 2.5, 2.5, 2.0, 2.5,
    2.0, 2.0, 2.5, 3.5, 3.0, 1.5, 5.0, 2.5, 5.5, 2.0, 2.5, 3.5, 2.0, 2.5, 4.0, 2.0, 2.0, 2.0, 2.0, 5.5, 4.5,
    4.0, 3.0, 3.0, 3.5, 2.5, 3.0, 2.5, 4.0, 6.0, 2.0, 5.0, 6.0, 3.5, 3.0, 54.5, 3.0, 5.0, 6.0, 3.5, 4.5, 2.5,
    2.0, 6.0, 5.0, 2.5, 3.5, 2.0, 3.0, 2.5, 3.5, 3.5, 2.5, 3.0, 4.5, 3.0, 15.5, 5.0, 2.5, 3.0, 4.0, 3.5, 4.0,
    4.0, 2.0, 4.5, 2.5, 4.0, 3.0,
]
KAYENTA_EXPERIMENT = [
    2.5, 2.5, 2.0, 2.5, 3.5, 2.0, 3.5, 1.5, 3.0, 3.0, 2.5, 3.5, 2.0, 2.5, 2.0, 2.0, 5.0, 3.0, 2.0, 1.5, 2.0,
    4.0, 3.0, 2.5, 3.0, 2.0, 2.0, 2.0, 2.5, 3.5, 1.5, 1.5, 3.5, 2.0, 2.5, 2.5, 3.0, 3.5, 2.5, 6.5, 2.5, 4.0,
    2.5, 3.0, 2.5, 6.5, 2.5, 3.0, 1.5, 2.0, 2.5, 3.0, 7.5, 1.5, 2.0, 4.0, 2.5, 2.0, 2.5, 3.5, 4.0, 2.5, 3.0,
    2.5, 2.0, 3.5, 3.0, 16.5, 3.0, 3.0, 7.0, 4.5, 5.0, 2.0, 3.5, 6.0, 1.5, 3.0, 2.5, 4.0, 3.0, 1.5, 5.0, 3.0,
    2.5, 5.5, 3.0, 1.5, 2.5, 6.0,
]


def test_small_samples_use_the_exact_interval_kayenta_and_r_give() -> None:
    # wilcox.test(c(10,20,30,40), c(1,2,3,4), conf.int=TRUE): [6, 39], estimate 22.5.
    estimate, lower, upper = hodges_lehmann(np.array([10.0, 20, 30, 40]), np.array([1.0, 2, 3, 4]), 0.95)
    assert (lower, upper, estimate) == (6.0, 39.0, 22.5)


def test_tied_samples_use_the_corrected_normal_interval_r_gives() -> None:
    estimate, lower, upper = hodges_lehmann(np.array(KAYENTA_EXPERIMENT), np.array(KAYENTA_CONTROL), 0.95)
    assert lower == pytest.approx(-0.500002521696696, abs=1e-6)
    assert upper == pytest.approx(-3.486287505871302e-5, abs=1e-6)
    assert estimate == pytest.approx(-0.4999393907180323, abs=1e-4)


@pytest.mark.parametrize(("n", "m", "alpha", "expected"), [
    (4, 4, 0.025, 1),  # qwilcox(0.025, 4, 4)
    (10, 10, 0.025, 24),  # P(U <= 23) = 0.0216 < 0.025 <= P(U <= 24)
    (5, 7, 0.05, 7),
])
def test_the_exact_quantile_is_rs_qwilcox(n: int, m: int, alpha: float, expected: int) -> None:
    assert wilcoxon_quantile(n, m, alpha) == expected


def test_the_interval_holds_the_estimate_and_shrinks_with_confidence() -> None:
    c, b = normal(103, n=40, seed=3), normal(100, n=40, seed=4)
    est, lo98, hi98 = hodges_lehmann(c, b, 0.98)
    _, lo90, hi90 = hodges_lehmann(c, b, 0.90)
    assert lo98 <= lo90 <= est <= hi90 <= hi98


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
