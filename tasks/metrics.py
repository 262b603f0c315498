"""Gate rounds: the planner and reader of ``phasegate.gates``, behind Prefect tasks.

What each gate queries and what its answer means is the core's (``gates``); this module only
adds the task boundary, the cluster look-up some templates need (each track's
pod-template-hash) and the mapping from plan time to what Prometheus sees: a {{window}} of
"5m" in plan time is rendered as the scaled wall duration in a rehearsal, never shorter than
the run context's pacing floor (rate() needs at least two scrapes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from prefect import task

from phasegate import gates, runctx, selectors
from phasegate.analysis import Measurement, Outcome, Reading, evaluate_judge
from phasegate.durations import promql_duration
from phasegate.errors import PhasegateError
from phasegate.gates import Scope
from phasegate.measure import collect
from phasegate.plan import Gate, GateKind, Phase, RolloutPlan
from phasegate.ports import MetricsProvider, SeriesFinder
from tasks.common import NO_CACHE


def scope_for(plan: RolloutPlan, phase: Phase) -> Scope:
    return gates.scope_for(plan, phase)


def to_promql(seconds: float) -> str:
    """A plan-time range as the wall duration Prometheus sees, never below the floor."""
    rt = runctx.get()
    return promql_duration(max(rt.clock.to_wall(seconds), rt.pacing.min_window_wall))


def window_for(gate: Gate, phase: Phase | None, default_seconds: float | None = None) -> str:
    return to_promql(gates.window_seconds(gate, phase, default_seconds))


def with_hashes(plan: RolloutPlan, scope: Scope) -> Scope:
    """The scope with each track's current pod-template-hash, if the plan's queries use it."""
    if not gates.uses_pod_template_hash(plan):
        return scope
    cluster = runctx.get().cluster
    hashes = {}
    for track in {scope.subject_track, scope.baseline_track}:
        found = cluster.pod_template_hash(scope.namespace, gates.workload(scope.deployment, track))
        if found:
            hashes[track] = found
    return replace(scope, hashes=tuple(sorted(hashes.items())))


# An empty answer is asked again once the next scrape can have landed: a tenth of the gate
# interval, never more than a common scrape interval (15 s: at 5 m it is that), never less than the
# rehearsal's scrape.
REQUERY_MAX_WALL = 15.0


def _requery_pause(phase: Phase) -> Callable[[], None]:
    rt = runctx.get()
    wait = max(min(rt.clock.to_wall(phase.interval.total_seconds()) / 10, REQUERY_MAX_WALL),
               rt.pacing.min_interval_wall, 0.05)
    return lambda: time.sleep(wait)


@task(name="measure_gates", **NO_CACHE)
def measure_gates(
    plan: RolloutPlan,
    phase: Phase,
    scope: Scope,
    pre_deploy: Mapping[str, float | str | None],
    at: float,
    judge_since: float | None = None,
) -> list[Measurement]:
    """One concurrent round of every gate of ``phase``, planned and read by ``gates``."""
    rt = runctx.get()
    scope = with_hashes(plan, scope)
    planned = gates.plan_round(plan, phase.gates(), scope, phase=phase, to_promql=to_promql, pre_deploy=pre_deploy)
    by_gate = {m.gate: m for m in gates.run_round(rt.metrics, planned, at=at, pause=_requery_pause(phase))}
    return [
        judge_gate(plan, g, scope, at=at, since=judge_since) if g.kind is GateKind.JUDGE else by_gate[g.name]
        for g in phase.gates()
    ]


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
    subject_q, baseline_q = gates.plan_judge(plan, gate, scope, window)
    canary = gates.read_values(rt.metrics, subject_q, start_wall, now_wall, step_wall)
    baseline = gates.read_values(rt.metrics, baseline_q, start_wall, now_wall, step_wall)
    for failed in (canary, baseline):
        # No data in a range is the judge's NoData (Inconclusive); an error is Error.
        if isinstance(failed, Reading) and failed.error:
            return Measurement(gate.name, Outcome.ERROR, at, bound=gate.bound, query=subject_q, message=failed.error)
    return evaluate_judge(gate, _values(canary), _values(baseline), at=at, query=subject_q)


def _values(series: list[float] | Reading) -> list[float]:
    return [] if isinstance(series, Reading) else series


@task(name="record_pre_deploy_baseline", **NO_CACHE)
def record_pre_deploy_baseline(plan: RolloutPlan, phase: Phase, scope: Scope) -> dict[str, float | str | None]:
    """Before the deploy, the same track's value over each pre_deploy gate's window: what
    "no degradation" is measured against where no stable track runs beside the new version.
    A provider error is recorded as its message, so the gate reads Error, not "no data"."""
    queries = gates.plan_pre_deploy(plan, phase, with_hashes(plan, scope), to_promql=to_promql)
    readings = gates.read_round(runctx.get().metrics, queries, pause=_requery_pause(phase))
    return {name: gates.recorded_value(r) for name, r in readings.items()}


@task(name="check_metrics", **NO_CACHE)
def check_metrics(plan: RolloutPlan) -> list[str]:
    """Preflight: Prometheus is up, every gate query parses, and every trigger and success
    criterion selects series of the stable track (which a ``pre_deploy`` baseline reads too).

    A query with no data is refused when one of its selectors matches no series by the
    labels that say whose series it is — a label convention the cluster does not have —
    naming the matcher (``selectors.diagnose``) and the rendered query. A counter child not
    born yet (no 5xx, no error of a type) is no mismatch. A query whose selectors all match
    series but whose value is empty (a ratio of events the old version never has, such as
    lock timeouts over lock attempts) is not a plan error: its series exist, and the soak
    counts rounds without data against the gate's limits. Every problem is listed at once."""
    rt = runctx.get()
    if not rt.metrics.is_online():
        return [f"Prometheus is not usable: {offline_reason(rt.metrics)}"]
    queries: dict[tuple[str, str], str] = {}
    for phase in plan.phases:
        scope = with_hashes(plan, Scope(plan.namespace(phase), plan.target.deployment, "stable"))
        for gate in phase.gates():
            queries[(phase.name, gate.name)] = gates.query(plan, gate, scope, "stable", window_for(gate, phase))
    samples = collect(rt.metrics, queries)
    convention = set(plan.labels.stable) | set(plan.labels.canary) if plan.labels is not None else set()
    identity = selectors.IDENTITY | convention
    problems = []
    for (phase_name, gate_name), s in samples.items():
        where = f"phases[{phase_name}].{gate_name}"
        if s.rejected:
            problems.append(f"{where}: Prometheus rejected the query: {s.error}")
        elif s.error and not s.no_data:
            problems.append(f"{where}: {s.error}")
        elif s.no_data:
            query = queries[(phase_name, gate_name)]
            if not isinstance(rt.metrics, SeriesFinder):
                problems.append(f"{where}: no data for the stable track: {query}")
                continue
            for why in selectors.diagnose_query(rt.metrics, query, identity):
                problems.append(f"{where}: no data for the stable track — {why} — query: {query}")
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
