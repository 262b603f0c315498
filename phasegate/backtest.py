"""Backtest: what would a phase's gates have decided over past data, round by round?

Pure core: the provider is the ``ports.MetricsProvider`` Protocol; queries are planned and
answers read by ``gates``, as in the live soak.

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
from datetime import timedelta

from phasegate import gates
from phasegate.analysis import Measurement, Reading, evaluate
from phasegate.decide import Action, Step, after_round
from phasegate.durations import format_duration
from phasegate.plan import Gate, GateKind, RolloutPlan
from phasegate.ports import MetricsProvider


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


def _plan_window(seconds: float) -> str:
    # Past data at plan time: the window is the plan's own, never scaled.
    return format_duration(timedelta(seconds=seconds))


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

    scope = gates.Scope(namespace, deployment, phase.subject_track)
    readings: dict[str, tuple[str, dict[int, Reading], dict[int, Reading] | Reading | None]] = {}
    planned = gates.plan_round(plan, judged.gates(), scope, phase=phase, to_promql=_plan_window)
    for q in planned:
        subject = gates.read_series(provider, q.subject, first, end, step)
        baseline: dict[int, Reading] | Reading | None = None
        if q.baseline is not None:
            baseline = gates.read_series(provider, q.baseline, first, end, step)
        elif q.gate.compares:
            baseline = gates.read_point(provider, q.subject, start, step)
        readings[q.gate.name] = (q.subject, subject, baseline)

    judged_gates: Sequence[Gate] = list(judged.gates())
    history: dict[str, list[Measurement]] = {g.name: [] for g in judged_gates}
    rounds: list[Round] = []
    count = int((end - first) // step) + 1
    for i in range(count):
        at = first + i * step
        key = round(at)
        found: dict[str, Measurement] = {}
        for gate in judged_gates:
            promql, subject, baseline = readings[gate.name]
            base = baseline.get(key, Reading()) if isinstance(baseline, dict) else baseline
            found[gate.name] = evaluate(gate, subject.get(key, Reading()), base, at=at, query=promql)
            history[gate.name].append(found[gate.name])
        action = after_round(judged, history, soak_done=at - start >= phase.soak.total_seconds())
        rounds.append(Round(at, found, action))
        if action.step is not Step.CONTINUE:
            break
    return BacktestResult(phase.name, start, end, tuple(rounds), skipped)
