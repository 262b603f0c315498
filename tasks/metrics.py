"""Gate rounds: render the phase's queries, run them at once, judge each gate.

The pure pieces (rendering, evaluation, judging) come from the core; this module only adds
the Prefect task boundary and the mapping from plan time to what Prometheus sees: a
{{window}} of "5m" in plan time is rendered as the scaled wall duration in a rehearsal,
never shorter than the run context's pacing floor (rate() needs at least two scrapes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from prefect import task

from phasegate import runctx, templates
from phasegate.analysis import Measurement, Outcome, Reading, evaluate, evaluate_judge
from phasegate.durations import promql_duration
from phasegate.errors import PhasegateError
from phasegate.measure import Sample, collect
from phasegate.plan import Baseline, Gate, GateKind, Phase, RolloutPlan
from phasegate.ports import MetricsProvider
from tasks.common import NO_CACHE


@dataclass(frozen=True)
class Scope:
    """Where a phase's gates look: namespace, deployment, and which track is which."""

    namespace: str
    deployment: str
    subject_track: str
    baseline_track: str = "stable"


def scope_for(plan: RolloutPlan, phase: Phase) -> Scope:
    return Scope(plan.namespace(phase), plan.target.deployment, phase.subject_track)


def window_for(gate: Gate, phase: Phase | None, default_seconds: float | None = None) -> str:
    rt = runctx.get()
    plan_seconds = (
        gate.window.total_seconds()
        if gate.window is not None
        else phase.interval.total_seconds()
        if phase is not None
        else float(default_seconds or 300)
    )
    return promql_duration(max(rt.clock.to_wall(plan_seconds), rt.pacing.min_window_wall))


def query_for(plan: RolloutPlan, gate: Gate, scope: Scope, track: str, window: str) -> str:
    return templates.render(
        plan.metrics[gate.metric].query,
        {"track": track, "namespace": scope.namespace, "deployment": scope.deployment, "window": window},
    )


def reading(sample: Sample) -> Reading:
    """No data is not an error: it makes the gate Inconclusive, never Error."""
    if sample.no_data:
        return Reading(None, None)
    return Reading(sample.value, sample.error)


@task(name="measure_gates", **NO_CACHE)
def measure_gates(
    plan: RolloutPlan,
    phase: Phase,
    scope: Scope,
    pre_deploy: Mapping[str, float | None],
    at: float,
    judge_since: float | None = None,
) -> list[Measurement]:
    """One concurrent round of every gate of ``phase``."""
    rt = runctx.get()
    queries: dict[str, str] = {}
    plan_for: dict[str, tuple[str, str | None]] = {}
    for gate in phase.gates():
        if gate.kind is GateKind.JUDGE:
            continue
        window = window_for(gate, phase)
        subject = query_for(plan, gate, scope, scope.subject_track, window)
        queries[subject] = subject
        baseline = None
        if gate.compares and gate.baseline is Baseline.STABLE:
            baseline = query_for(plan, gate, scope, scope.baseline_track, window)
            queries[baseline] = baseline
        plan_for[gate.name] = (subject, baseline)
    samples = collect(rt.metrics, queries)
    out: list[Measurement] = []
    for gate in phase.gates():
        if gate.kind is GateKind.JUDGE:
            out.append(judge_gate(plan, gate, scope, at=at, since=judge_since))
            continue
        subject_q, baseline_q = plan_for[gate.name]
        subject = reading(samples[subject_q])
        base: Reading | None = None
        if baseline_q is not None:
            base = reading(samples[baseline_q])
        elif gate.compares:
            recorded = pre_deploy.get(gate.name)
            base = Reading(recorded, None)
        out.append(evaluate(gate, subject, base, at=at, query=subject_q))
    return out


def judge_gate(plan: RolloutPlan, gate: Gate, scope: Scope, *, at: float, since: float | None) -> Measurement:
    """Kayenta's judge over the soak so far: the gate's series on both tracks."""
    rt = runctx.get()
    config = gate.judge
    if config is None:
        raise ValueError(f"gate {gate.name!r} has no judge settings")
    step_wall = max(rt.clock.to_wall(config.step.total_seconds()), rt.pacing.min_interval_wall, 1.0)
    window = promql_duration(max(step_wall, rt.pacing.min_window_wall))
    now_wall = time.time()
    start_wall = now_wall - max(rt.clock.to_wall((at - since) if since is not None else 3600.0), step_wall)
    subject_q = query_for(plan, gate, scope, scope.subject_track, window)
    baseline_q = query_for(plan, gate, scope, scope.baseline_track, window)
    try:
        canary = [v for _, v in rt.metrics.query_range(subject_q, start_wall, now_wall, step_wall)]
        baseline = [v for _, v in rt.metrics.query_range(baseline_q, start_wall, now_wall, step_wall)]
    except Exception as exc:  # provider errors are data (Argo), never raised through the soak
        return Measurement(gate.name, Outcome.ERROR, at, bound=gate.bound, query=subject_q, message=str(exc))
    return evaluate_judge(gate, canary, baseline, at=at, query=subject_q)


@task(name="record_pre_deploy_baseline", **NO_CACHE)
def record_pre_deploy_baseline(plan: RolloutPlan, phase: Phase, scope: Scope) -> dict[str, float | None]:
    """Before the deploy, the same track's value over each pre_deploy gate's window: what
    "no degradation" is measured against where no stable track runs beside the new version."""
    gates = [
        g for g in phase.gates() if g.compares and g.baseline is Baseline.PRE_DEPLOY and g.kind is not GateKind.JUDGE
    ]
    queries = {g.name: query_for(plan, g, scope, "stable", window_for(g, phase)) for g in gates}
    samples = collect(runctx.get().metrics, queries)
    return {name: s.value for name, s in samples.items()}


@task(name="check_metrics", **NO_CACHE)
def check_metrics(plan: RolloutPlan) -> list[str]:
    """Preflight: Prometheus is up, every gate query parses, and the stable track has data.
    Every problem is listed at once."""
    rt = runctx.get()
    if not rt.metrics.is_online():
        return [f"Prometheus is not usable: {offline_reason(rt.metrics)}"]
    queries: dict[tuple[str, str], str] = {}
    for phase in plan.phases:
        scope = Scope(plan.namespace(phase), plan.target.deployment, "stable")
        for gate in phase.gates():
            queries[(phase.name, gate.name)] = query_for(plan, gate, scope, "stable", window_for(gate, phase))
    problems = []
    for (phase_name, gate_name), s in collect(rt.metrics, queries).items():
        if s.rejected:
            problems.append(f"phases[{phase_name}].{gate_name}: Prometheus rejected the query: {s.error}")
        elif s.error and not s.no_data:
            problems.append(f"phases[{phase_name}].{gate_name}: {s.error}")
    return problems


def offline_reason(metrics: MetricsProvider) -> str:
    """Why ``is_online`` said no, in the provider's own (already scrubbed) words.

    "Not reachable" sent an operator whose password was wrong to look for a network
    problem; the provider knows it was a 401 and says so without the credentials."""
    try:
        value = metrics.query("vector(1)")
    except PhasegateError as exc:
        return str(exc)
    return f"vector(1) failed, then evaluated to {value} on a second try (flapping?)"
