"""Measurements, outcomes and their assessment: the pure heart of every gate decision.

Modelled on Argo Rollouts' analysis controller:
- one ``Outcome`` type serves a measurement, a gate and a phase, with an explicit severity
  order; the verdict of many is the ``worst`` of them;
- evaluating a value is a pure function; a provider error is data (``Outcome.ERROR``), not
  an exception;
- no data is never success: a missing or NaN value is ``INCONCLUSIVE``;
- a gate's measurements over a soak are assessed with Argo's limits (failure limit 0,
  inconclusive limit 0, consecutive error limit 4 by default).
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from phasegate.plan import Baseline, Gate, GateKind


class Outcome(enum.Enum):
    SUCCESSFUL = "Successful"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"
    FAILED = "Failed"

    @property
    def severity(self) -> int:
        """Argo's order (analysisStatusOrder): Successful < Inconclusive < Error < Failed."""
        return _SEVERITY[self]


_SEVERITY = {Outcome.SUCCESSFUL: 0, Outcome.INCONCLUSIVE: 1, Outcome.ERROR: 2, Outcome.FAILED: 3}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The most severe outcome; an empty collection has observed nothing: Inconclusive."""
    found = list(outcomes)
    if not found:
        return Outcome.INCONCLUSIVE
    return max(found, key=lambda o: o.severity)


class ReadingLike(Protocol):
    """What a metrics round yields per query (``measure.Sample`` has this shape)."""

    @property
    def value(self) -> float | None: ...

    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class Reading:
    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Measurement:
    """One gate, one round: the numbers, the bound they were held to, and the verdict."""

    gate: str
    outcome: Outcome
    at: float
    value: float | None = None
    baseline: float | None = None
    compared: float | None = None
    bound: str = ""
    query: str = ""
    message: str = ""


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
ZERO_TOLERANCE = 1e-9  # increase() of an untouched counter is exactly 0; errors give >= 1


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def evaluate(
    gate: Gate,
    subject: ReadingLike,
    baseline: ReadingLike | None = None,
    *,
    at: float = 0.0,
    query: str = "",
) -> Measurement:
    """Hold one round's reading(s) to ``gate``. Judge gates go through ``judge`` instead."""
    if gate.kind is GateKind.JUDGE:
        raise ValueError("judge gates compare sample series: use phasegate.judge")

    def result(outcome: Outcome, message: str = "", compared: float | None = None) -> Measurement:
        return Measurement(
            gate=gate.name,
            outcome=outcome,
            at=at,
            value=subject.value if _usable(subject.value) else None,
            baseline=baseline.value if baseline is not None and _usable(baseline.value) else None,
            compared=compared,
            bound=gate.bound,
            query=query,
            message=message,
        )

    if subject.error:
        return result(Outcome.ERROR, subject.error)
    if gate.compares:
        if baseline is None:
            return result(Outcome.INCONCLUSIVE, "no baseline reading")
        if baseline.error:
            return result(Outcome.ERROR, f"baseline: {baseline.error}")
    if not _usable(subject.value):
        return result(Outcome.INCONCLUSIVE, "no data")
    value = float(subject.value)  # type: ignore[arg-type]
    if gate.kind is GateKind.ZERO:
        ok = abs(value) <= ZERO_TOLERANCE
        return result(Outcome.SUCCESSFUL if ok else Outcome.FAILED, "" if ok else f"{value:g} > 0", value)
    if gate.kind is GateKind.ABSOLUTE:
        compared = value
    else:
        assert baseline is not None
        if not _usable(baseline.value):
            which = "stable" if gate.baseline is Baseline.STABLE else "pre-deploy"
            return result(Outcome.INCONCLUSIVE, f"no {which} baseline data")
        base = float(baseline.value)  # type: ignore[arg-type]
        if gate.kind is GateKind.DELTA:
            compared = value - base
        elif base == 0:
            # 0/0 is "no change"; x/0 is an unbounded increase.
            compared = 1.0 if value == 0 else math.inf
        else:
            compared = value / base
    ok = _OPS[gate.op](compared, gate.threshold)
    message = "" if ok else f"{compared:g} breaks {gate.bound}"
    return result(Outcome.SUCCESSFUL if ok else Outcome.FAILED, message, compared)


@dataclass(frozen=True)
class Assessment:
    """A gate's verdict over the measurements so far, with the counts behind it."""

    gate: str
    outcome: Outcome
    measurements: int
    failed: int
    inconclusive: int
    errors: int
    consecutive_errors: int
    reason: str
    # 1-based rounds that came back without data, for the report.
    no_data_rounds: tuple[int, ...] = ()

    @property
    def exhausted(self) -> bool:
        """Past its inconclusive limit: no later round can make the gate pass."""
        return self.outcome is Outcome.INCONCLUSIVE and self.reason.startswith(_PAST_LIMIT)


_PAST_LIMIT = "past its limit of rounds without data"


def assess(gate: Gate, measurements: Sequence[Measurement], *, rounds: int | None = None) -> Assessment:
    """Argo's assessMetricStatus: failed > failure_limit → Failed; inconclusive >
    inconclusive_limit → Inconclusive; consecutive errors > consecutive_error_limit → Error.
    Otherwise Successful — but only if the latest measurement observed something healthy:
    a gate never passes on a run of errors or on nothing at all.

    ``rounds``: how many rounds the whole soak has, for a limit given as a share ("2%");
    default: the measurements so far."""
    failed = sum(m.outcome is Outcome.FAILED for m in measurements)
    inconclusive = sum(m.outcome is Outcome.INCONCLUSIVE for m in measurements)
    errors = sum(m.outcome is Outcome.ERROR for m in measurements)
    # The longest run of errors, not only the trailing one: exceeding the limit ends an
    # Argo analysis for good, so a later measurement must not turn Error back into
    # Inconclusive (hypothesis found [Error x5, Failed] reading better than [Error x5]).
    consecutive = run = 0
    for m in measurements:
        run = run + 1 if m.outcome is Outcome.ERROR else 0
        consecutive = max(consecutive, run)

    empty = tuple(i for i, m in enumerate(measurements, 1) if m.outcome is Outcome.INCONCLUSIVE)

    def verdict(outcome: Outcome, reason: str) -> Assessment:
        return Assessment(gate.name, outcome, len(measurements), failed, inconclusive, errors, consecutive, reason,
                          empty)

    if failed > gate.failure_limit:
        last = next(m for m in reversed(measurements) if m.outcome is Outcome.FAILED)
        return verdict(Outcome.FAILED, f"{failed} failed (limit {gate.failure_limit}): {last.message}")
    if consecutive > gate.consecutive_error_limit:
        limit = gate.consecutive_error_limit
        last = next(m for m in reversed(measurements) if m.outcome is Outcome.ERROR)
        return verdict(Outcome.ERROR, f"{consecutive} errors in a row (limit {limit}): {last.message}")
    allowed = gate.inconclusive_allowed(rounds if rounds is not None else len(measurements))
    if inconclusive > allowed:
        share = isinstance(gate.inconclusive_limit, str)
        allowance = f"{gate.inconclusive_limit} of {rounds} = {allowed}" if share else str(allowed)
        last = next(m for m in reversed(measurements) if m.outcome is Outcome.INCONCLUSIVE)
        return verdict(Outcome.INCONCLUSIVE, f"{_PAST_LIMIT} ({inconclusive} > {allowance}): rounds "
                                             f"{_ranges(empty)} without data — {last.message or 'no data'}")
    if not measurements:
        return verdict(Outcome.INCONCLUSIVE, "not measured")
    if measurements[-1].outcome is not Outcome.SUCCESSFUL:
        return verdict(Outcome.INCONCLUSIVE, f"latest measurement: {measurements[-1].outcome.value}")
    return verdict(Outcome.SUCCESSFUL, "")


def _ranges(rounds: Sequence[int]) -> str:
    """1,2,3,7,9,10 → "1-3, 7, 9-10": which rounds, readably, however long the soak."""
    runs: list[list[int]] = []
    for r in rounds:
        if runs and runs[-1][1] == r - 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def evaluate_judge(
    gate: Gate, canary: Sequence[float], baseline: Sequence[float], *, at: float = 0.0, query: str = ""
) -> Measurement:
    """A ``kind: judge`` gate: Kayenta's Mann-Whitney classification of the two series.
    Pass → Successful, High/Low (in the gate's direction) → Failed, NoData → Inconclusive."""
    from phasegate import judge

    config = gate.judge
    if config is None:
        raise ValueError(f"gate {gate.name!r} has no judge settings")
    metric = judge.MetricConfig(
        name=gate.name, direction=judge.Direction(config.direction), tolerance=config.tolerance,
    )
    result = judge.classify(canary, baseline, metric, confidence=config.confidence)
    outcome = {
        judge.Classification.PASS: Outcome.SUCCESSFUL,
        judge.Classification.HIGH: Outcome.FAILED,
        judge.Classification.LOW: Outcome.FAILED,
        judge.Classification.NODATA: Outcome.INCONCLUSIVE,
    }[result.classification]
    return Measurement(
        gate=gate.name, outcome=outcome, at=at, value=result.canary_median, baseline=result.baseline_median,
        compared=result.p_value, bound=gate.bound, query=query,
        message=f"{result.classification.value}: {result.reason} (n={result.canary_n}/{result.baseline_n})",
    )
