"""Backtest: what would a phase's gates have decided over past data, round by round?

Pure core: the provider is the ``ports.MetricsProvider`` Protocol.

Design decisions:

* One range query per gate and track over the whole span, with ``step`` = the phase's gate
  interval, gives exactly the values the soak loop would have read each round; a round
  missing from the answer is no data (Inconclusive), as it would have been live.
* Subject and baseline tracks follow the phase: the canary (or stable, where no canary runs)
  against the stable track for ``baseline: stable``; for ``pre_deploy`` the same query at the
  backtest's start, which stands in for the deploy.
* The decision after each round is ``decide.after_round`` itself, so the backtest and the
  rollout cannot disagree. The backtest stops at the first round whose action ends the phase
  (roll back, hold, halt, advance), as the rollout would.
* Judge gates compare sample distributions drawn live from two tracks; they are left out and
  named in the result rather than counted as passing or failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from phasegate import errors, templates
from phasegate.analysis import Measurement, Reading, evaluate
from phasegate.decide import Action, Step, after_round
from phasegate.durations import format_duration
from phasegate.plan import Baseline, Gate, GateKind, Phase, RolloutPlan
from phasegate.ports import STABLE, MetricsProvider


@dataclass(frozen=True)
class Round:
    """One gate round of the backtest: when, what every gate measured, what was decided."""

    at: float
    measurements: Mapping[str, Measurement]
    action: Action


@dataclass(frozen=True)
class BacktestResult:
    phase: str
    start: float
    end: float
    rounds: tuple[Round, ...]
    skipped: tuple[str, ...]  # judge gates, not backtested

    @property
    def final(self) -> Action:
        return self.rounds[-1].action if self.rounds else Action(Step.CONTINUE, "no complete round in the span")

    @property
    def decisive(self) -> Round | None:
        """The round that ended the phase, if one did."""
        last = self.rounds[-1] if self.rounds else None
        return last if last is not None and last.action.step is not Step.CONTINUE else None


def _query(plan: RolloutPlan, gate: Gate, phase: Phase, namespace: str, deployment: str, track: str) -> str:
    window = format_duration(gate.window or phase.interval)
    values = {"namespace": namespace, "deployment": deployment, "track": track, "window": window}
    return templates.render(plan.metrics[gate.metric].query, values)


def _series(provider: MetricsProvider, promql: str, start: float, end: float, step: float) -> dict[int, Reading]:
    """Readings by rounded time; an error is recorded for every round of the span."""
    try:
        points = provider.query_range(promql, start, end, step)
    except errors.NoData:
        return {}
    except errors.PhasegateError as exc:
        error = Reading(error=f"{type(exc).__name__}: {exc}")
        count = int((end - start) // step) + 1
        return {round(start + i * step): error for i in range(count)}
    return {round(t): Reading(value=v) for t, v in points}


def backtest(
    plan: RolloutPlan,
    phase_name: str,
    provider: MetricsProvider,
    start: float,
    end: float,
    *,
    namespace: str | None = None,
    deployment: str | None = None,
) -> BacktestResult:
    """Replay ``phase_name``'s gates over ``[start, end]`` as if it had been deployed at ``start``."""
    phase = plan.phase(phase_name)
    namespace = namespace or plan.namespace(phase)
    deployment = deployment or plan.target.deployment
    step = phase.interval.total_seconds()
    skipped = tuple(g.name for g in phase.gates() if g.kind is GateKind.JUDGE)
    judged = phase.model_copy(update={"success": [g for g in phase.success if g.kind is not GateKind.JUDGE]})
    first = start + step
    if first > end:
        return BacktestResult(phase.name, start, end, (), skipped)

    subject_track = phase.subject_track
    readings: dict[str, tuple[str, dict[int, Reading], dict[int, Reading] | Reading | None]] = {}
    for gate in judged.gates():
        promql = _query(plan, gate, phase, namespace, deployment, subject_track)
        subject = _series(provider, promql, first, end, step)
        baseline: dict[int, Reading] | Reading | None = None
        if gate.compares and gate.baseline is Baseline.STABLE:
            baseline = _series(provider, _query(plan, gate, phase, namespace, deployment, STABLE), first, end, step)
        elif gate.compares:
            baseline = _series(provider, promql, start, start, step).get(round(start), Reading())
        readings[gate.name] = (promql, subject, baseline)

    gates: Sequence[Gate] = list(judged.gates())
    history: dict[str, list[Measurement]] = {g.name: [] for g in gates}
    rounds: list[Round] = []
    count = int((end - first) // step) + 1
    for i in range(count):
        at = first + i * step
        key = round(at)
        found: dict[str, Measurement] = {}
        for gate in gates:
            promql, subject, baseline = readings[gate.name]
            base = baseline.get(key, Reading()) if isinstance(baseline, dict) else baseline
            found[gate.name] = evaluate(gate, subject.get(key, Reading()), base, at=at, query=promql)
            history[gate.name].append(found[gate.name])
        action = after_round(judged, history, soak_done=at - start >= phase.soak.total_seconds())
        rounds.append(Round(at, found, action))
        if action.step is not Step.CONTINUE:
            break
    return BacktestResult(phase.name, start, end, tuple(rounds), skipped)
