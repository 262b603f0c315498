"""One rollout phase as a subflow: baseline → deploy → wait ready → checks → soak → verdict.

Design decisions:

* The pre-deploy baseline is measured and written to the record *before* the deploy, in the
  same write that marks the phase ``deploying``. A run that resumes a ``deploying`` phase
  reuses it: measured again, it would be the new version's own value, and a regression would
  be compared against itself.
* Triggers run on their own cadence (``trigger_every``, a minute by default) and the success
  criteria every ``interval``: a rollback trigger must fire within the seed's 5-minute
  budget, while a criterion judged over 48 hours gains nothing from more rounds.
* Rounds keep a fixed cadence: the next starts one cadence after this one started, however
  long the queries took, so "every 5m" stays every 5m.
* A round is not a Prefect task run of its own: a 48 h soak is 577 full rounds and 2,880
  trigger rounds, and a task run each would swamp the run's page and cost more
  orchestration than the queries themselves. Each round is recorded as an event and a row
  of the phase's one gates table (``evidence.PhaseGates``), which reaches the API at most
  every ``evidence.EVERY_WALL`` seconds — at once when a gate did not pass, and always at
  the end — which at real speed is every round.
* The flow only orders the steps; every decision is ``decide.after_round``'s.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.context import Rollout
from phasegate import runctx
from phasegate.analysis import Measurement, Outcome
from phasegate.decide import Action, Step, after_checks, after_deploy_failure, after_drift, after_round
from phasegate.drift import observed_total
from phasegate.notify import Kind, Severity
from phasegate.plan import Environment, Phase, RolloutPlan
from phasegate.record import PhaseState
from tasks import evidence
from tasks.checks import CheckResult, run_phase_checks
from tasks.cluster import (
    check_drift,
    deploy_canary,
    deploy_image,
    expected_state,
    follow_autoscaler,
    read_target,
    remove_canary,
    wait_until_ready,
)
from tasks.metrics import measure_gates, record_pre_deploy_baseline, scope_for


@dataclass
class PhaseResult:
    phase: str
    action: Action
    rounds: list[list[Measurement]] = field(default_factory=list)
    # The last round that judged every gate (trigger-only rounds in between show triggers only).
    last_round: list[Measurement] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_wall: float = 0.0
    ended_wall: float = 0.0
    started_plan: float = 0.0
    ended_plan: float = 0.0


def _phase_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    plan: RolloutPlan = params["plan"]
    return f"{params['phase_name']} {plan.target.deployment}:{str(params['image']).rsplit(':', 1)[-1]}"


def deploy(rollout: Rollout, phase: Phase) -> str | None:
    """Put the phase's share of the new version in place; the reason it failed, or None."""
    ref = rollout.ref_for(phase)
    total = rollout.release.total_replicas
    if phase.environment is Environment.PRODUCTION:
        # Once a canary runs, the count to split is what serves now: a person's kubectl scale
        # mid-rollout is kept, not undone (drift.py judges whether the split still holds).
        state = read_target(ref)
        if state.canary is not None:
            total = rollout.release.total_replicas = observed_total(state)
    deadline = rollout.plan.target.progress_deadline.total_seconds()
    # The progress deadline is the cluster's (progressDeadlineSeconds); this is only a
    # backstop so a silent API cannot hang the flow.
    backstop = max(runctx.get().clock.to_wall(deadline), 5.0) + 30.0
    if phase.environment is Environment.STAGING:
        deploy_image(ref, rollout.image)
        waits = [ref.deployment]
    elif phase.has_canary:
        deploy_canary(ref, rollout.image, phase.canary_share, total, backstop)
        waits = [ref.canary, ref.deployment]
    else:
        deploy_image(ref, rollout.image, total)
        waits = [ref.deployment]
    for name in waits:
        outcome = wait_until_ready(ref.namespace, name, backstop)
        if isinstance(outcome, str):
            return outcome
    if phase.environment is Environment.PRODUCTION and not phase.has_canary:
        remove_canary(ref, total)
    return None


def triggers_only(phase: Phase) -> Phase:
    return phase.model_copy(update={"success": []})


@flow(name="phase", flow_run_name=_phase_run_name, validate_parameters=False)
def run_phase(plan: RolloutPlan, image: str, phase_name: str, driver: str | None = None,
              resume: bool = False) -> PhaseResult:
    log = get_run_logger()
    rt = runctx.get()
    clock, pacing = rt.clock, rt.pacing
    phase = plan.phase(phase_name)
    rollout = Rollout.attach(plan, image, driver)
    release = rollout.release
    result = PhaseResult(phase.name, Action(Step.CONTINUE), events=rollout.events, started_wall=time.time(),
                         started_plan=clock.now())
    scope = scope_for(plan, phase)

    def finish(action: Action) -> PhaseResult:
        result.action = action
        result.ended_wall, result.ended_plan = time.time(), clock.now()
        return result

    here = resume and release.phase == phase.name
    soaking = here and release.state is PhaseState.SOAKING and release.soak_started is not None
    if not soaking:
        if not (here and release.state is PhaseState.DEPLOYING):
            pre = {k: v for k, v in release.baselines.items() if not k.startswith(phase.name + "/")}
            for gate_name, value in record_pre_deploy_baseline(plan, phase, scope).items():
                pre[f"{phase.name}/{gate_name}"] = value
            release.baselines = pre
        release.phase, release.state, release.soak_started = phase.name, PhaseState.DEPLOYING, None
        rollout.save()
        rollout.notify(
            f"{phase.name}:started", Kind.PHASE_STARTED,
            f"{phase.name}: deploying {rollout.image} ({phase.environment.value}, {phase.canary_share:g}%)",
            phase=phase.name,
        )
        failure = deploy(rollout, phase)
        deployed_at = time.monotonic()
        rollout.record("deployed", phase=phase.name, error=failure)
        if failure:
            log.error("deploy failed: %s", failure)
            return finish(after_deploy_failure(phase, f"deploy did not become ready — {failure}"))
        if phase.checks:
            result.checks = run_phase_checks(list(phase.checks), sorted({plan.namespace(p) for p in plan.phases}))
            action = after_checks(phase, [f"{c.name}: {c.detail}" for c in result.checks if not c.passed])
            if action.step is not Step.CONTINUE:
                return finish(action)
        delay = clock.to_wall(phase.initial_delay.total_seconds())
        warmup = max(delay, pacing.min_warmup_wall)
        if warmup > 0 and pacing.until_scraped is not None:
            time.sleep(delay)  # the plan's own initial_delay is always waited in full
            # The floor counts from the deploy, not from the checks' end: monitoring discovers
            # the new pods while the checks run, and waiting it out again after them added
            # seconds to every rehearsed phase.
            pacing.until_scraped(max(0.0, deployed_at + warmup - time.monotonic()))
        elif warmup > 0:
            time.sleep(warmup)
        release.state, release.soak_started = PhaseState.SOAKING, clock.now()
        rollout.save()

    baselines = {
        k.split("/", 1)[1]: v for k, v in release.baselines.items() if k.startswith(phase.name + "/")
    }
    soak_started = release.soak_started or clock.now()
    soak_seconds = max(phase.soak.total_seconds(), pacing.min_soak_wall * clock.speed)
    soak_end = soak_started + soak_seconds
    # Full rounds are scheduled by number in plan time: round k at soak start + k intervals,
    # and the soak ends after its last one. A loop that falls behind (a stalled API, a
    # compressed clock) runs the rounds it owes at once rather than fewer of them; a run
    # that resumes mid-soak owes none for the time it was dead.
    interval = max(phase.interval.total_seconds(), clock.speed * pacing.min_interval_wall)
    full_rounds = int(-(-soak_seconds // interval)) + 1  # the last one at the soak's end
    full_done = min(int(-(-(clock.now() - soak_started) // interval)), full_rounds - 1) if soaking else 0
    # A floor keeps a mis-set clock from turning the soak into a busy loop against Prometheus.
    trigger_wall = max(clock.to_wall(phase.trigger_every.total_seconds()), pacing.min_interval_wall, 0.001)
    trigger_phase = triggers_only(phase)
    progress = evidence.start_progress(rollout.release.id, phase.name)
    gates_table = evidence.PhaseGates.for_phase(rollout.release.id, phase.name,
                                                {g.name: g.bound for g in phase.gates()}, rollout.flow_run_id)
    history: dict[str, list[Measurement]] = defaultdict(list)

    def due(k: int) -> float:
        return min(soak_started + k * interval, soak_end)

    # What this phase left on the cluster: each full round checks the world still shows it
    # (a GitOps sync, a CI apply or a person putting the old image back is not a promotion).
    ref = rollout.ref_for(phase)
    expected = expected_state(plan, phase, ref, rollout.image, release.previous_image)
    # Asked once per phase: a round on a target no autoscaler scales costs no extra request.
    autoscaled = phase.has_canary and read_target(ref).autoscaler is not None
    while True:
        round_started = time.monotonic()
        now = clock.now()
        full = now >= due(full_done)
        done = full and full_done == full_rounds - 1
        if full:
            full_done += 1
        measurements = measure_gates.fn(plan, phase if full else trigger_phase, scope, baselines, now, soak_started)
        result.rounds.append(measurements)
        for m in measurements:
            history[m.gate].append(m)
        action = after_round(phase, history, soak_done=done)
        if full and action.step in (Step.CONTINUE, Step.ADVANCE):
            if autoscaled:
                try:  # stable's autoscaler moved with the load: the canary keeps its share of it
                    follow_autoscaler.fn(ref, phase.canary_share)
                except Exception as exc:  # as with drift: the next round asks again
                    log.warning("%s: could not re-size the canary beside stable's autoscaler: %s", phase.name, exc)
            try:
                drifted = after_drift(phase, check_drift.fn(plan, ref, expected))
            except Exception as exc:  # an unreadable cluster this round is no drift; the next round asks again
                log.warning("%s: could not check the cluster for drift: %s", phase.name, exc)
                drifted = Action(Step.CONTINUE)
            if drifted.step is not Step.CONTINUE:
                rollout.notify(f"{phase.name}:drift", Kind.DRIFT, f"{phase.name}: {drifted.reason}",
                               severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link())
                action = drifted
        if full:
            result.last_round = measurements
        # Trigger-only rounds that pass are left out of the table (four times as many as the
        # full rounds, and nothing to see); one that did not pass is what the table is for.
        worth_showing = any(m.outcome is not Outcome.SUCCESSFUL for m in measurements)
        ends = action.step is not Step.CONTINUE
        if full or worth_showing or ends:
            news = gates_table.add(len(result.rounds), measurements, now - soak_started)
            if gates_table.publish(urgent=news, final=ends):
                evidence.update_progress(progress, 100.0 * (now - soak_started) / max(phase.soak.total_seconds(), 1e-9))
        rollout.record(
            "round", phase=phase.name, round=len(result.rounds), step=action.step.value, full=full,
            outcomes={m.gate: m.outcome.value for m in measurements}, reason=action.reason,
            progress=min(1.0, (now - soak_started) / max(soak_end - soak_started, 1e-9)),
        )
        if action.step is not Step.CONTINUE:
            evidence.update_progress(progress, 100.0)
            log.info("%s: %s — %s", phase.name, action.step.value, action.reason)
            return finish(action)
        next_full_wall = clock.to_wall(due(full_done) - clock.now())
        next_round = min(trigger_wall - (time.monotonic() - round_started), next_full_wall)
        time.sleep(max(0.0, next_round))
