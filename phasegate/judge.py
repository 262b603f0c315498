"""Canary-vs-baseline judgement, after Kayenta's NetflixACAJudge and MannWhitneyClassifier.

Design decisions:

* Per metric, a Mann-Whitney U test compares canary and baseline samples (no normality
  assumption: latencies and error counts are skewed). Significance is ``p < 1 - confidence``
  (confidence 0.98, Kayenta's default).
* The size of the change is the Hodges-Lehmann estimate (median of all pairwise
  differences canary - baseline) with its distribution-free confidence interval. With
  heavily tied data (error counts that are mostly zero) that median can be exactly 0 while
  the test is significant; the difference of means then gives the size and sign instead,
  so "three errors where there were none" is not read as no change.
* ``tolerance`` is the allowed relative effect, ``|effect| / |baseline centre|``. A zero
  baseline makes any significant change infinitely large rather than a division by zero,
  and identical constant samples pass without running the test at all.
* ``direction`` says which change is bad: with ``increase`` a significant decrease is
  reported (``shift="decrease"``) but classified Pass, as Kayenta does.
* Scoring: per group, the share of metrics that pass among those with data; groups
  weighted; a failing critical metric, a must-have-data metric without data, or 50% or
  more NoData metrics make the score 0. The verdict strings match the core's Outcome
  names (Successful / Inconclusive / Failed) so the caller can map them one to one.
* Pure: numpy and scipy only; deterministic (large samples are thinned by quantiles, not
  at random).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

DEFAULT_CONFIDENCE = 0.98
DEFAULT_PASS_SCORE = 95.0
DEFAULT_MARGINAL_SCORE = 75.0
NODATA_SCORE_LIMIT = 0.5
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


class Verdict(StrEnum):
    """Values are the core's Outcome names."""

    SUCCESSFUL = "Successful"
    INCONCLUSIVE = "Inconclusive"
    FAILED = "Failed"


@dataclass(frozen=True)
class MetricConfig:
    """How one metric is judged."""

    name: str
    group: str = "default"
    direction: Direction = Direction.EITHER
    tolerance: float = 0.0  # allowed |effect| / |baseline centre|; 0.05 allows a 5% change
    critical: bool = False  # failing it fails the whole judgement
    must_have_data: bool = False  # NoData on it fails the whole judgement
    nan_strategy: NanStrategy = NanStrategy.REMOVE


@dataclass(frozen=True)
class JudgeConfig:
    """Score thresholds and group weights (an absent group weighs 1)."""

    confidence: float = DEFAULT_CONFIDENCE
    pass_score: float = DEFAULT_PASS_SCORE
    marginal_score: float = DEFAULT_MARGINAL_SCORE
    group_weights: Mapping[str, float] = field(default_factory=dict)
    max_samples: int = DEFAULT_MAX_SAMPLES


@dataclass(frozen=True)
class MetricResult:
    """One metric's classification and the statistics behind it."""

    name: str
    group: str
    classification: Classification
    reason: str
    critical: bool = False
    must_have_data: bool = False
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


@dataclass(frozen=True)
class JudgeResult:
    """The score 0-100, its verdict, and every metric's result."""

    score: float
    verdict: Verdict
    reason: str
    metrics: tuple[MetricResult, ...]
    group_scores: Mapping[str, float]


def _clean(values: Sequence[float], strategy: NanStrategy) -> np.ndarray:
    data = np.asarray(values, dtype=float).ravel()
    bad = ~np.isfinite(data)
    if strategy is NanStrategy.REPLACE:
        return np.where(bad, 0.0, data)
    return data[~bad]


def _thin(data: np.ndarray, limit: int) -> np.ndarray:
    if data.size <= limit:
        return data
    return np.quantile(data, np.linspace(0, 1, limit))


def _hodges_lehmann(canary: np.ndarray, baseline: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Estimate and confidence interval of the shift canary - baseline (Bauer 1972)."""
    diffs = np.sort(np.subtract.outer(canary, baseline).ravel())
    n, m = canary.size, baseline.size
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    k = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12))
    k = min(max(k, 0), diffs.size - 1)
    return float(np.median(diffs)), float(diffs[k]), float(diffs[diffs.size - 1 - k])


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
        critical=metric.critical, must_have_data=metric.must_have_data, canary_n=int(c.size), baseline_n=int(b.size),
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
    estimate, lower, upper = _hodges_lehmann(_thin(c, max_samples), _thin(b, max_samples), confidence)
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


def score(results: Sequence[MetricResult], config: JudgeConfig = JudgeConfig()) -> JudgeResult:
    """Kayenta's weighted group score and its verdict."""
    if not results:
        raise ValueError("nothing to judge: no metrics")
    groups: dict[str, list[MetricResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    group_scores = {
        g: 100.0 * sum(not r.failed for r in with_data) / len(with_data)
        for g, rs in groups.items()
        if (with_data := [r for r in rs if r.classification is not Classification.NODATA])
    }

    nodata = sum(r.classification is Classification.NODATA for r in results)
    critical = [r.name for r in results if r.critical and r.failed]
    missing = [r.name for r in results if r.must_have_data and r.classification is Classification.NODATA]
    if critical:
        value, reason = 0.0, f"critical metric failed: {', '.join(critical)}"
    elif missing:
        value, reason = 0.0, f"no data for required metric: {', '.join(missing)}"
    elif nodata / len(results) >= NODATA_SCORE_LIMIT:
        value, reason = 0.0, f"{nodata} of {len(results)} metrics have no data"
    else:
        weights = {g: float(config.group_weights.get(g, 1.0)) for g in group_scores}
        total = sum(weights.values())
        value = sum(weights[g] * s for g, s in group_scores.items()) / total if total > 0 else 0.0
        failed = [r.name for r in results if r.failed]
        reason = f"failed: {', '.join(failed)}" if failed else "all metrics pass"

    if value >= config.pass_score:
        verdict = Verdict.SUCCESSFUL
    elif value >= config.marginal_score:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.FAILED
    return JudgeResult(round(value, 2), verdict, reason, tuple(results), group_scores)


def judge(
    samples: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    metrics: Sequence[MetricConfig],
    config: JudgeConfig = JudgeConfig(),
) -> JudgeResult:
    """Classify each metric from ``samples[name] = (canary, baseline)`` and score the lot.

    A metric without an entry in ``samples`` is NoData.
    """
    results = [
        classify(*samples.get(m.name, ((), ())), m, confidence=config.confidence, max_samples=config.max_samples)
        for m in metrics
    ]
    return score(results, config)
