"""Canary-vs-baseline judgement, after Kayenta's NetflixACAJudge and MannWhitneyClassifier.

Design decisions:

* Per metric, a Mann-Whitney U test compares canary and baseline samples (no normality
  assumption: latencies and error counts are skewed). Significance is ``p < 1 - confidence``
  (confidence 0.98, Kayenta's default).
* The size of the change is the Hodges-Lehmann estimate (median of all pairwise
  differences canary - baseline) with its distribution-free confidence interval, computed
  as R's ``wilcox.test(conf.int=TRUE)`` does (Kayenta ports the same code): the exact
  Wilcoxon quantile for untied samples under 50 each, else the normal approximation with
  tie and continuity corrections, solved for the shift at which the rank statistic crosses
  the quantile (Brent's method, R's tolerance 1e-4). The normal index ``floor(nm/2 - z·sd)``
  used before put each bound one order statistic too far in on small samples. With
  heavily tied data (error counts that are mostly zero) that median can be exactly 0 while
  the test is significant; the difference of means then gives the size and sign instead,
  so "three errors where there were none" is not read as no change.
* ``tolerance`` is the allowed relative effect, ``|effect| / |baseline centre|``. A zero
  baseline makes any significant change infinitely large rather than a division by zero,
  and identical constant samples pass without running the test at all.
* ``direction`` says which change is bad: with ``increase`` a significant decrease is
  reported (``shift="decrease"``) but classified Pass, as Kayenta does.
* One gate is one metric: the classification maps to the gate's outcome (``analysis.
  evaluate_judge``). Kayenta's weighted group score is not ported — a plan combines gates
  with triggers and success criteria instead — and a ``critical`` judge is the plan's
  business (``decide.after_round`` rolls back on it, as Kayenta fails a run on a critical
  metric).
* Pure: numpy and scipy only; deterministic (large samples are thinned by quantiles, not
  at random).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from scipy import optimize, stats

DEFAULT_CONFIDENCE = 0.98
# R's wilcox.test switches to the normal approximation at 50 samples per side (or ties).
EXACT_LIMIT = 50
# Pairwise differences grow as n*m; beyond this many samples per side, use quantiles.
DEFAULT_MAX_SAMPLES = 2000


class Direction(StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class NanStrategy(StrEnum):
    REMOVE = "remove"
    REPLACE = "replace"


class Classification(StrEnum):
    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "NoData"


@dataclass(frozen=True)
class MetricConfig:
    """How one metric is judged."""

    name: str
    group: str = "default"
    direction: Direction = Direction.EITHER
    tolerance: float = 0.0  # allowed |effect| / |baseline centre|; 0.05 allows a 5% change
    nan_strategy: NanStrategy = NanStrategy.REMOVE


@dataclass(frozen=True)
class MetricResult:
    """One metric's classification and the statistics behind it."""

    name: str
    group: str
    classification: Classification
    reason: str
    shift: str = "none"  # "increase" / "decrease" / "none": what was detected, before direction
    p_value: float | None = None
    effect: float | None = None
    lower: float | None = None
    upper: float | None = None
    relative_effect: float | None = None
    canary_n: int = 0
    baseline_n: int = 0
    canary_median: float | None = None
    baseline_median: float | None = None

    @property
    def failed(self) -> bool:
        return self.classification in (Classification.HIGH, Classification.LOW)


def _clean(values: Sequence[float], strategy: NanStrategy) -> np.ndarray:
    data = np.asarray(values, dtype=float).ravel()
    bad = ~np.isfinite(data)
    if strategy is NanStrategy.REPLACE:
        replaced: np.ndarray = np.where(bad, 0.0, data)
        return replaced
    kept: np.ndarray = data[~bad]
    return kept


def _thin(data: np.ndarray, limit: int) -> np.ndarray:
    if data.size <= limit:
        return data
    thinned: np.ndarray = np.quantile(data, np.linspace(0, 1, limit))
    return thinned


def wilcoxon_quantile(n: int, m: int, alpha: float) -> int:
    """R's ``qwilcox(alpha, n, m)``: the smallest u with P(U <= u) >= alpha under no shift.

    Counts arrangements: with i canary and j baseline values, the largest is either a
    canary value (it beats all j baseline values) or a baseline value (it beats none).
    """
    row = [np.ones(1) for _ in range(m + 1)]  # i = 0: one arrangement, U = 0
    for i in range(1, n + 1):
        new = [np.ones(1)]
        for j in range(1, m + 1):
            ways = np.zeros(i * j + 1)
            ways[j : j + row[j].size] += row[j]
            ways[: new[j - 1].size] += new[j - 1]
            new.append(ways)
        row = new
    cdf = np.cumsum(row[m]) / row[m].sum()
    return int(np.searchsorted(cdf, alpha - 1e-12))


def _rank_statistic(canary: np.ndarray, baseline: np.ndarray, shift: float, zq: float) -> float:
    """R's ``wdiff``: the continuity- and tie-corrected normal score of the rank sum of
    ``canary - shift`` against ``baseline``, minus the quantile ``zq``."""
    n, m = canary.size, baseline.size
    ranks = stats.rankdata(np.concatenate([canary - shift, baseline]))
    dz = float(ranks[:n].sum()) - n * (n + 1) / 2 - n * m / 2
    _, ties = np.unique(ranks, return_counts=True)
    sigma = math.sqrt(n * m / 12 * ((n + m + 1) - float((ties**3 - ties).sum()) / ((n + m) * (n + m - 1))))
    return (dz - math.copysign(0.5, dz) * (dz != 0)) / sigma - zq


def hodges_lehmann(canary: np.ndarray, baseline: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Estimate and confidence interval of the shift canary - baseline, as R computes them."""
    diffs = np.sort(np.subtract.outer(canary, baseline).ravel())
    estimate = float(np.median(diffs))
    n, m = canary.size, baseline.size
    alpha = 1 - confidence
    tied = np.unique(np.concatenate([canary, baseline])).size < n + m
    if n < EXACT_LIMIT and m < EXACT_LIMIT and not tied:
        qu = max(wilcoxon_quantile(n, m, alpha / 2), 1)
        return estimate, float(diffs[qu - 1]), float(diffs[n * m - qu])
    low, high = float(diffs[0]), float(diffs[-1])
    if low == high:
        return estimate, low, high

    def root(zq: float) -> float:
        if _rank_statistic(canary, baseline, low, zq) <= 0:
            return low
        if _rank_statistic(canary, baseline, high, zq) >= 0:
            return high
        return float(optimize.brentq(lambda d: _rank_statistic(canary, baseline, d, zq), low, high, xtol=1e-4))

    z = float(stats.norm.ppf(1 - alpha / 2))
    return estimate, root(z), root(-z)


def classify(
    canary: Sequence[float],
    baseline: Sequence[float],
    metric: MetricConfig,
    confidence: float = DEFAULT_CONFIDENCE,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> MetricResult:
    """Pass / High / Low / NoData for one metric's canary and baseline samples."""
    c = _clean(canary, metric.nan_strategy)
    b = _clean(baseline, metric.nan_strategy)
    r = MetricResult(
        name=metric.name, group=metric.group, classification=Classification.NODATA, reason="",
        canary_n=int(c.size), baseline_n=int(b.size),
    )
    if c.size == 0 or b.size == 0:
        return replace(r, reason=f"no {'canary' if c.size == 0 else 'baseline'} data")
    b_med = float(np.median(b))
    r = replace(r, canary_median=float(np.median(c)), baseline_median=b_med)
    if np.ptp(c) == 0 and np.ptp(b) == 0 and c[0] == b[0]:
        # Identical constants: nothing to test (and the U statistic's variance is zero).
        return replace(
            r, classification=Classification.PASS, reason="identical constant samples", p_value=1.0,
            effect=0.0, lower=0.0, upper=0.0, relative_effect=0.0,
        )

    p_value = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    estimate, lower, upper = hodges_lehmann(_thin(c, max_samples), _thin(b, max_samples), confidence)
    effect = estimate if estimate != 0 else float(np.mean(c) - np.mean(b))
    scale = max(abs(b_med), abs(float(np.mean(b))))
    if effect == 0:
        relative = 0.0
    elif scale == 0:
        relative = math.inf
    else:
        relative = abs(effect) / scale
    r = replace(r, p_value=p_value, effect=effect, lower=lower, upper=upper, relative_effect=relative)

    if not (p_value < 1 - confidence and effect != 0):
        return replace(r, classification=Classification.PASS, reason=f"no significant change (p={p_value:.3g})")
    shift = "increase" if effect > 0 else "decrease"
    r = replace(r, shift=shift)
    if relative <= metric.tolerance:
        reason = f"{shift} of {relative:.2%} within tolerance {metric.tolerance:.2%}"
        return replace(r, classification=Classification.PASS, reason=reason)
    ignored = (metric.direction is Direction.INCREASE and shift == "decrease") or (
        metric.direction is Direction.DECREASE and shift == "increase"
    )
    if ignored:
        reason = f"{shift} ignored: only {metric.direction.value} is bad"
        return replace(r, classification=Classification.PASS, reason=reason)
    size = "from zero" if math.isinf(relative) else f"of {relative:.2%}"
    return replace(
        r, classification=Classification.HIGH if shift == "increase" else Classification.LOW,
        reason=f"significant {shift} {size} (p={p_value:.3g}, tolerance {metric.tolerance:.2%})",
    )
