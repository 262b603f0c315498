"""Rollback subflows, one per strategy of the seed: feature flag, canary only, full undo.

Each acts, then verifies twice — the cluster shows the old state, and the metrics that
fired come back within bounds inside the phase's ``verify_window`` (reported either way) —
then notifies. A rollback that cannot be verified is a critical notification, never silence.

Full undo is guarded: ``kubectl rollout undo`` is only issued while the Deployment still
runs the new image. Re-running it after a crash (or in a phase where stable never got the
new image) would otherwise roll back one revision too far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from flows.context import Rollout
from phasegate.analysis import Outcome
from phasegate.notify import Kind, Severity
from phasegate.plan import GateKind, Phase, Strategy
from phasegate.ports import TargetRef
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
from tasks.release import ROLLED_BACK
from tasks.runtime import current


@dataclass
class RollbackResult:
    strategy: str
    phase: str
    reason: str
    gates: list[str]
    ok: bool = False
    cluster_verified: bool = False
    metrics_recovered: bool | None = None
    detail: list[str] = field(default_factory=list)
    started_wall: float = 0.0
    acted_wall: float = 0.0
    completed_wall: float = 0.0


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"rollback-{params['strategy'].value.replace('_', '-')} {params['rollout'].ref.deployment}"


def _feature_flag_off(rollout: Rollout, ref: TargetRef) -> list[str]:
    flag = rollout.plan.feature_flag
    assert flag is not None
    if flag.configmap is not None and (flag.prefer == "configmap" or flag.env is None):
        set_feature_flag_configmap(ref.namespace, flag.configmap.name, flag.configmap.key, flag.off_value)
        value = read_configmap(ref.namespace, flag.configmap.name).get(flag.configmap.key)
        ok = value == flag.off_value
        return [] if ok else [f"ConfigMap {flag.configmap.name}/{flag.configmap.key} reads {value!r}"]
    assert flag.env is not None
    set_feature_flag_env(ref, flag.env, flag.off_value)
    state = read_target(ref)
    problems = []
    for workload in (state.stable, state.canary):
        if workload is not None and workload.env.get(flag.env) != flag.off_value:
            problems.append(f"{workload.name}: {flag.env}={workload.env.get(flag.env)!r}")
    return problems


def _canary_only(rollout: Rollout, ref: TargetRef) -> list[str]:
    total = rollout.release.total_replicas
    remove_canary(ref, total)
    outcome = wait_until_ready(ref.namespace, ref.deployment, 60.0)
    state = read_target(ref)
    problems = [] if not isinstance(outcome, str) else [outcome]
    if state.canary is not None:
        problems.append(f"{ref.canary} still exists")
    if state.stable.replicas != total:
        problems.append(f"stable has {state.stable.replicas} replicas, expected {total}")
    if state.stable.image == rollout.image:
        problems.append(f"stable runs the new image {rollout.image}")
    return problems


def _full_undo(rollout: Rollout, ref: TargetRef) -> list[str]:
    state = read_target(ref)
    if state.canary is not None:
        remove_canary(ref, rollout.release.total_replicas if ref == rollout.ref else state.stable.replicas)
    if state.stable.image == rollout.image:
        undo_rollout(ref)
    outcome = wait_until_ready(ref.namespace, ref.deployment, 60.0)
    state = read_target(ref)
    problems = [] if not isinstance(outcome, str) else [outcome]
    if state.stable.image == rollout.image:
        problems.append(f"{ref} still runs {rollout.image}")
    if state.canary is not None:
        problems.append(f"{ref.canary} still exists")
    return problems


def _verify_metrics(
    rollout: Rollout, phase: Phase, strategy: Strategy, gate_names: list[str]
) -> tuple[bool | None, str]:
    """Poll the fired triggers until they pass again, within the phase's verify window.

    After canary-only and full undo only the stable track serves, so the triggers are read
    there; a gate that compares against stable has nothing left to compare and is skipped.
    True: every one passes again. False: one still fails at the deadline. None: nothing
    fails but some read no data — a switched-off code path (a feature flag) stops reporting
    the very metric that fired, which cannot be called recovered or not.
    """
    rt = current()
    wanted = [t for t in phase.triggers if t.name in gate_names and t.kind in (GateKind.ZERO, GateKind.ABSOLUTE)]
    if not wanted:
        return None, "no absolute trigger to re-measure"
    track = phase.subject_track if strategy is Strategy.FEATURE_FLAG else "stable"
    check = phase.model_copy(update={"triggers": wanted, "success": []})
    scope = Scope(rollout.plan.namespace(phase), rollout.plan.target.deployment, track)
    deadline = time.time() + max(rt.clock.to_wall(phase.verify_window.total_seconds()), 4 * rt.min_window_wall, 2.0)
    measurements = []
    while True:
        measurements = measure_gates(rollout.plan, check, scope, {}, rt.clock.now())
        if all(m.outcome is Outcome.SUCCESSFUL for m in measurements):
            return True, ", ".join(f"{m.gate}={evidence.fmt(m.value)}" for m in measurements)
        if time.time() >= deadline:
            detail = "; ".join(f"{m.gate}: {m.outcome.value} {m.message}".strip() for m in measurements)
            failing = any(m.outcome in (Outcome.FAILED, Outcome.ERROR) for m in measurements)
            return (False if failing else None), detail
        time.sleep(max(rt.min_interval_wall, 0.25))


ACTIONS = {Strategy.FEATURE_FLAG: _feature_flag_off, Strategy.CANARY_ONLY: _canary_only, Strategy.FULL_UNDO: _full_undo}


@flow(name="rollback", flow_run_name=_run_name, validate_parameters=False)
def run_rollback(rollout: Rollout, phase: Phase, strategy: Strategy, reason: str, gates: list[str]) -> RollbackResult:
    log = get_run_logger()
    result = RollbackResult(strategy.value, phase.name, reason, list(gates), started_wall=time.time())
    rollout.record("rollback_started", phase=phase.name, strategy=strategy.value, reason=reason, gates=list(gates))
    rollout.notify(
        f"{phase.name}:rollback-started", Kind.ROLLBACK_STARTED,
        f"Rolling back {rollout.ref.deployment} ({strategy.value}) in {phase.name}: {reason}",
        severity=Severity.CRITICAL, phase=phase.name, fields={"strategy": strategy.value, "trigger": ", ".join(gates)},
        links=rollout.ui_link(), background=True,
    )
    ref = rollout.ref_for(phase)
    try:
        problems = ACTIONS[strategy](rollout, ref)
    except Exception as exc:  # a failed rollback must be reported, loudly, not lost in a traceback
        log.exception("rollback action failed")
        problems = [f"{type(exc).__name__}: {exc}"]
    result.acted_wall = time.time()
    result.cluster_verified = not problems
    result.detail.extend(problems or [f"cluster shows the previous state ({strategy.value})"])
    recovered, detail = _verify_metrics(rollout, phase, strategy, list(gates))
    result.metrics_recovered = recovered
    result.detail.append(f"metrics: {detail}")
    result.completed_wall = time.time()
    result.ok = result.cluster_verified
    rollout.flush()
    rollout.release.state = ROLLED_BACK
    rollout.save()
    rollout.record(
        "rollback_completed", phase=phase.name, ok=result.ok, metrics_recovered=recovered, detail=result.detail
    )
    evidence.publish_markdown(
        rollout.release.id, f"{phase.name}-rollback",
        "\n".join([
            f"# Rollback of {rollout.ref} in {phase.name}",
            f"- strategy: **{strategy.value}**", f"- reason: {reason}", f"- triggers: {', '.join(gates) or '—'}",
            f"- cluster verified: {result.cluster_verified}", f"- metrics recovered: {recovered}",
            f"- act: {result.acted_wall - result.started_wall:.2f}s, "
            f"total: {result.completed_wall - result.started_wall:.2f}s",
            "", *[f"- {d}" for d in result.detail],
        ]),
        "rollback evidence",
    )
    if result.ok:
        rollout.notify(
            f"{phase.name}:rollback-verified", Kind.ROLLBACK_VERIFIED,
            f"Rollback of {rollout.ref.deployment} verified ({strategy.value}); metrics recovered: {recovered}",
            phase=phase.name, fields={"detail": "; ".join(result.detail)[:1500]},
        )
    else:
        rollout.notify(
            f"{phase.name}:rollback-failed", Kind.ROLLBACK_FAILED,
            f"ROLLBACK FAILED for {rollout.ref.deployment} ({strategy.value}): {'; '.join(problems)}",
            severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link(),
        )
    return result
