"""Rollback subflows, one per strategy of the seed: feature flag, canary only, full undo.

Design decisions:

* The rollback is written to the record (state ``rolling-back``, strategy, reason) before
  anything is touched: a run killed mid-rollback is followed by one that finishes the
  rollback, never by one that soaks the old version and calls it promoted. Every action
  is idempotent, so finishing means doing it again.
* Each step acts, then verifies twice — the cluster shows the old state (waiting as long as
  the target's progress deadline, as a rolling undo takes), and the metrics that fired come
  back within bounds inside the phase's ``verify_window`` (reported either way).
* A feature flag is the softest cure and may be no cure: the ConfigMap is flipped first (no
  restart); if the fired metrics have not recovered by the end of the verify window, the
  env var is set too (pods restart); if that does not cure either, the rollback escalates
  (``decide.escalation``) to removing the new version, and says so as a critical notice.
* Full undo is guarded: ``kubectl rollout undo`` is only issued while the Deployment still
  runs the new image. Re-running it after a crash (or in a phase where stable never got the
  new image) would otherwise roll back one revision too far.
* Times are kept in wall and plan seconds: "flag flipped → metrics recovered" in plan time is
  what the seed's "< 1 minute" promises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.context import Rollout
from phasegate import runctx
from phasegate.analysis import Measurement, Outcome
from phasegate.decide import Expected, escalation, rollback_problems
from phasegate.drift import observed_total
from phasegate.gates import window_seconds
from phasegate.notify import Kind, Severity
from phasegate.plan import GateKind, Phase, RolloutPlan, Strategy
from phasegate.ports import TargetRef
from phasegate.record import PhaseState, RollbackRecord
from tasks import evidence
from tasks.cluster import (
    read_configmap,
    read_target,
    remove_canary,
    set_feature_flag_configmap,
    set_feature_flag_env,
    undo_rollout,
    wait_until_ready,
)
from tasks.metrics import Scope, measure_gates


@dataclass
class RollbackStep:
    """One action of a rollback and what verifying it found."""

    strategy: str
    via: str  # configmap | env | canary | undo
    cluster_verified: bool = False
    metrics_recovered: bool | None = None
    detail: list[str] = field(default_factory=list)
    acted_plan: float = 0.0
    # Plan seconds from acting to the fired metrics passing again; None if they did not.
    recovered_after_plan: float | None = None


@dataclass
class RollbackResult:
    strategy: str
    phase: str
    reason: str
    gates: list[str]
    ok: bool = False
    cluster_verified: bool = False
    metrics_recovered: bool | None = None
    final_strategy: str = ""
    escalated: bool = False
    steps: list[RollbackStep] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_wall: float = 0.0
    acted_wall: float = 0.0
    completed_wall: float = 0.0
    started_plan: float = 0.0
    completed_plan: float = 0.0


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    plan: RolloutPlan = params["plan"]
    return f"rollback-{Strategy(params['strategy']).value.replace('_', '-')} {plan.target.deployment}"


def _ready_or_why(rollout: Rollout, namespace: str, name: str) -> list[str]:
    outcome = wait_until_ready(namespace, name, rollout_ready_timeout(rollout))
    return [outcome] if isinstance(outcome, str) else []


def rollout_ready_timeout(rollout: Rollout) -> float:
    """As long as the cluster gives a rollout (progressDeadlineSeconds), plus a margin for the API."""
    deadline = rollout.plan.target.progress_deadline.total_seconds()
    return max(runctx.get().clock.to_wall(deadline), 5.0) + 30.0


def _flag_configmap(rollout: Rollout, ref: TargetRef) -> list[str]:
    flag = rollout.plan.feature_flag
    assert flag is not None and flag.configmap is not None
    set_feature_flag_configmap(ref.namespace, flag.configmap.name, flag.configmap.key, flag.off_value)
    value = read_configmap(ref.namespace, flag.configmap.name).get(flag.configmap.key)
    return rollback_problems(Strategy.FEATURE_FLAG, read_target(ref), Expected(rollout.image, flag_off=flag.off_value),
                             configmap_value=value, configmap_key=f"{flag.configmap.name}/{flag.configmap.key}")


def _flag_env(rollout: Rollout, ref: TargetRef) -> list[str]:
    flag = rollout.plan.feature_flag
    assert flag is not None and flag.env is not None
    set_feature_flag_env(ref, flag.env, flag.off_value)
    state = read_target(ref)
    problems = _ready_or_why(rollout, ref.namespace, ref.deployment)
    if state.canary is not None:
        problems += _ready_or_why(rollout, ref.namespace, ref.canary)
    expected = Expected(rollout.image, flag_env=flag.env, flag_off=flag.off_value)
    return problems + rollback_problems(Strategy.FEATURE_FLAG, read_target(ref), expected)


def _canary_only(rollout: Rollout, ref: TargetRef) -> list[str]:
    # What serves now, not the count at the start: a manual scale since is kept.
    before = read_target(ref)
    total = observed_total(before) if before.canary is not None else rollout.release.total_replicas
    remove_canary(ref, total)
    problems = _ready_or_why(rollout, ref.namespace, ref.deployment)
    state = read_target(ref)
    # An autoscaler owns the count: rollback_problems checks it is back as it was instead.
    expected = Expected(rollout.image, stable_replicas=None if state.autoscaler else total)
    return problems + rollback_problems(Strategy.CANARY_ONLY, state, expected)


def _full_undo(rollout: Rollout, ref: TargetRef) -> list[str]:
    state = read_target(ref)
    if state.canary is not None:
        remove_canary(ref, rollout.release.total_replicas if ref == rollout.ref else state.stable.replicas)
    if state.stable.image == rollout.image:
        # To the revision that ran the previous image: an env-var rollback tried first made
        # a revision of the new image, which a plain undo would restore.
        undo_rollout(ref, rollout.release.previous_image or None)
    problems = _ready_or_why(rollout, ref.namespace, ref.deployment)
    return problems + rollback_problems(Strategy.FULL_UNDO, read_target(ref), Expected(rollout.image))


def _actions(rollout: Rollout, strategy: Strategy) -> list[tuple[str, Any]]:
    """The steps of ``strategy`` for this plan, softest first."""
    if strategy is Strategy.FEATURE_FLAG:
        flag = rollout.plan.feature_flag
        assert flag is not None
        steps: list[tuple[str, Any]] = []
        if flag.configmap is not None:
            steps.append(("configmap", _flag_configmap))
        if flag.env is not None:
            steps.append(("env", _flag_env))
        if flag.prefer != "configmap" and len(steps) == 2:
            steps.reverse()
        return steps
    if strategy is Strategy.CANARY_ONLY:
        return [("canary", _canary_only)]
    return [("undo", _full_undo)]


def verify_metrics(
    rollout: Rollout, phase: Phase, strategy: Strategy, gate_names: list[str], pods_replaced: bool = True
) -> tuple[bool | None, str, float | None]:
    """Poll the fired triggers until they pass again, within the phase's verify window.

    After canary-only and full undo only the stable track serves, so the triggers are read
    there; a gate that compares against stable has nothing left to compare and is skipped.
    True: every one passes again. False: one still fails at the deadline. None: nothing
    fails but some read no data — a switched-off code path (a feature flag) stops reporting
    the very metric that fired, which cannot be called recovered or not. The third value is
    the plan time at which they passed. ``pods_replaced``: the step restarted pods, whose
    counters appear only on first increment, so "no data" is not an answer before they have
    been scraped.
    """
    rt = runctx.get()
    wanted = [t for t in phase.triggers if t.name in gate_names and t.kind in (GateKind.ZERO, GateKind.ABSOLUTE)]
    if not wanted:
        return None, "no absolute trigger to re-measure", None
    track = phase.subject_track if strategy is Strategy.FEATURE_FLAG else "stable"
    check = phase.model_copy(update={"triggers": wanted, "success": []})
    scope = Scope(rollout.plan.namespace(phase), rollout.plan.target.deployment, track)
    verify_wall = rt.clock.to_wall(phase.verify_window.total_seconds())
    # Replaced pods are scraped only after discovery, and their counters appear on first
    # increment: a reading before then sees the old pods' tail or nothing at all.
    settle = rt.pacing.min_warmup_wall if pods_replaced else 0.0
    if settle and rt.pacing.until_scraped is not None:
        rt.pacing.until_scraped(settle)  # the world knows when the replaced pods are scraped
        settle = 0.0
    # One passing reading right after an action has seen almost no traffic of the new state; a
    # pass counts once it has held for a whole gate window (or until the verify window ends).
    hold = max(rt.pacing.min_window_wall,
               max(rt.clock.to_wall(window_seconds(t, phase)) for t in wanted) if pods_replaced else 0.0)
    started = time.time()
    deadline = started + max(verify_wall, settle + 4 * rt.pacing.min_window_wall, 2.0)
    passing_since: tuple[float, float] | None = None
    measurements: list[Measurement] = []
    while True:
        if time.time() >= started + settle:
            measurements = measure_gates(rollout.plan, check, scope, {}, rt.clock.now())
            if all(m.outcome is Outcome.SUCCESSFUL for m in measurements):
                passing_since = passing_since or (time.time(), rt.clock.now())
            else:
                passing_since = None
            held = passing_since is not None and time.time() - passing_since[0] >= hold
            if passing_since is not None and (held or time.time() >= deadline):
                return True, ", ".join(f"{m.gate}={evidence.fmt(m.value)}" for m in measurements), passing_since[1]
        if time.time() >= deadline and measurements:
            detail = "; ".join(f"{m.gate}: {m.outcome.value} {m.message}".strip() for m in measurements)
            failing = any(m.outcome in (Outcome.FAILED, Outcome.ERROR) for m in measurements)
            return (False if failing else None), detail, None
        time.sleep(max(rt.pacing.min_interval_wall, 0.25))


@flow(name="rollback", flow_run_name=_run_name, validate_parameters=False)
def run_rollback(plan: RolloutPlan, image: str, phase_name: str, strategy: Strategy, reason: str,
                 gates: list[str], driver: str | None = None) -> RollbackResult:
    log = get_run_logger()
    clock = runctx.get().clock
    strategy = Strategy(strategy)
    phase = plan.phase(phase_name)
    rollout = Rollout.attach(plan, image, driver)
    release = rollout.release
    result = RollbackResult(strategy.value, phase.name, reason, list(gates), events=rollout.events,
                            started_wall=time.time(), started_plan=clock.now())
    if release.state is not PhaseState.ROLLING_BACK or release.rollback is None:
        release.rollback = RollbackRecord(phase.name, strategy.value, reason, tuple(gates), clock.now())
    release.state = PhaseState.ROLLING_BACK
    rollout.save()
    rollout.record("rollback_started", phase=phase.name, strategy=strategy.value, reason=reason, gates=list(gates))
    rollout.notify(
        f"{phase.name}:rollback-started", Kind.ROLLBACK_STARTED,
        f"Rolling back {rollout.ref.deployment} ({strategy.value}) in {phase.name}: {reason}",
        severity=Severity.CRITICAL, phase=phase.name, fields={"strategy": strategy.value, "trigger": ", ".join(gates)},
        links=rollout.ui_link(), background=True,
    )
    ref = rollout.ref_for(phase)
    current: Strategy | None = strategy
    while current is not None:
        steps = _actions(rollout, current)
        for index, (via, act) in enumerate(steps):
            step = RollbackStep(current.value, via, acted_plan=clock.now())
            try:
                problems = act(rollout, ref)
            except Exception as exc:  # a failed rollback must be reported, loudly, not lost in a traceback
                log.exception("rollback action failed")
                problems = [f"{type(exc).__name__}: {exc}"]
            result.acted_wall = result.acted_wall or time.time()
            step.cluster_verified = not problems
            step.detail = problems or [f"cluster shows the previous state ({current.value} via {via})"]
            recovered, detail, at = verify_metrics(rollout, phase, current, list(gates),
                                                   pods_replaced=via != "configmap")
            step.metrics_recovered = recovered
            step.recovered_after_plan = None if at is None else at - step.acted_plan
            step.detail.append(f"metrics: {detail}")
            result.steps.append(step)
            rollout.record("rollback_step", phase=phase.name, strategy=current.value, via=via,
                           cluster_verified=step.cluster_verified, metrics_recovered=recovered)
            if recovered is not False or not step.cluster_verified or index == len(steps) - 1:
                break
            log.warning("%s via %s did not cure %s; trying %s", current.value, via, gates, steps[index + 1][0])
        last = result.steps[-1]
        following = escalation(phase, current) if last.cluster_verified and last.metrics_recovered is False else None
        if following is not None:
            rollout.notify(
                f"{phase.name}:rollback-escalated-{following.value}", Kind.ROLLBACK_FAILED,
                f"{current.value} did not cure {', '.join(gates)} within {phase.verify_window}: escalating to "
                f"{following.value}", severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link(),
            )
            result.escalated = True
        current = following
    last = result.steps[-1]
    result.final_strategy = last.strategy
    result.cluster_verified = last.cluster_verified
    result.metrics_recovered = last.metrics_recovered
    result.ok = last.cluster_verified and last.metrics_recovered is not False
    result.detail = [line for s in result.steps for line in s.detail]
    result.completed_wall, result.completed_plan = time.time(), clock.now()
    rollout.flush()
    release.state = PhaseState.ROLLED_BACK
    rollout.save()
    rollout.record(
        "rollback_completed", phase=phase.name, ok=result.ok, metrics_recovered=result.metrics_recovered,
        detail=result.detail, final_strategy=result.final_strategy,
    )
    evidence.publish_markdown(
        rollout.release.id, f"{phase.name}-rollback",
        "\n".join([
            f"# Rollback of {rollout.ref} in {phase.name}",
            f"- strategy: **{strategy.value}**" + (f" → escalated to **{result.final_strategy}**"
                                                   if result.escalated else ""),
            f"- reason: {reason}", f"- triggers: {', '.join(gates) or '—'}",
            f"- cluster verified: {result.cluster_verified}", f"- metrics recovered: {result.metrics_recovered}",
            f"- act: {result.acted_wall - result.started_wall:.2f}s, "
            f"total: {result.completed_wall - result.started_wall:.2f}s wall, "
            f"{result.completed_plan - result.started_plan:.0f}s plan time",
            "", *[f"- {s.strategy} via {s.via}: cluster {s.cluster_verified}, metrics {s.metrics_recovered}"
                  + ("" if s.recovered_after_plan is None else f" after {s.recovered_after_plan:.0f}s plan time")
                  for s in result.steps],
            "", *[f"- {d}" for d in result.detail],
        ]),
        "rollback evidence",
    )
    if result.ok:
        rollout.notify(
            f"{phase.name}:rollback-verified", Kind.ROLLBACK_VERIFIED,
            f"Rollback of {rollout.ref.deployment} verified ({result.final_strategy}); metrics recovered: "
            f"{result.metrics_recovered}", phase=phase.name, fields={"detail": "; ".join(result.detail)[:1500]},
        )
    else:
        why = "metrics did not recover" if last.cluster_verified else "; ".join(last.detail)
        rollout.notify(
            f"{phase.name}:rollback-failed", Kind.ROLLBACK_FAILED,
            f"ROLLBACK NOT VERIFIED for {rollout.ref.deployment} ({result.final_strategy}): {why}",
            severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link(),
        )
    return result
