"""One rollout phase as a subflow: deploy → wait ready → checks → soak → verdict.

The soak queries every gate of the phase concurrently once per interval and asks
``decide.after_round`` what to do; a failed trigger ends the soak at once (fail fast). The
flow only orders the steps; every decision is the core's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from flows.context import Rollout
from phasegate.analysis import Measurement
from phasegate.decide import Action, Step, after_checks, after_deploy_failure, after_round
from phasegate.notify import Kind
from phasegate.plan import Environment, Phase
from tasks import evidence
from tasks.checks import CheckResult, run_phase_checks
from tasks.cluster import deploy_canary, deploy_image, remove_canary, wait_until_ready
from tasks.metrics import measure_gates, record_pre_deploy_baseline, scope_for
from tasks.release import DEPLOYING, SOAKING
from tasks.runtime import current


@dataclass
class PhaseResult:
    phase: str
    action: Action
    rounds: list[list[Measurement]] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    started_wall: float = 0.0
    ended_wall: float = 0.0
    started_plan: float = 0.0
    ended_plan: float = 0.0

    @property
    def last_round(self) -> list[Measurement]:
        return self.rounds[-1] if self.rounds else []


def _phase_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    rollout: Rollout = params["rollout"]
    return f"{params['phase'].name} {rollout.ref.deployment}:{rollout.image.rsplit(':', 1)[-1]}"


def deploy(rollout: Rollout, phase: Phase) -> str | None:
    """Put the phase's share of the new version in place; the reason it failed, or None."""
    ref = rollout.ref_for(phase)
    total = rollout.release.total_replicas
    deadline = rollout.plan.target.progress_deadline.total_seconds()
    # The progress deadline is the cluster's (progressDeadlineSeconds); this is only a
    # backstop so a silent API cannot hang the flow.
    backstop = max(current().clock.to_wall(deadline), 5.0) + 30.0
    if phase.environment is Environment.STAGING:
        deploy_image(ref, rollout.image)
        waits = [ref.deployment]
    elif phase.has_canary:
        deploy_canary(ref, rollout.image, phase.canary_share, total)
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


@flow(name="phase", flow_run_name=_phase_run_name, validate_parameters=False)
def run_phase(rollout: Rollout, phase: Phase, resume: bool = False) -> PhaseResult:
    log = get_run_logger()
    rt = current()
    clock = rt.clock
    plan, release = rollout.plan, rollout.release
    result = PhaseResult(phase.name, Action(Step.CONTINUE), started_wall=time.time(), started_plan=clock.now())
    scope = scope_for(plan, phase)

    def finish(action: Action) -> PhaseResult:
        result.action = action
        result.ended_wall, result.ended_plan = time.time(), clock.now()
        return result

    soaking = resume and release.phase == phase.name and release.state == SOAKING and release.soak_started
    if not soaking:
        release.phase, release.state, release.soak_started = phase.name, DEPLOYING, None
        pre = {k: v for k, v in release.baselines.items() if not k.startswith(phase.name + "/")}
        for gate_name, value in record_pre_deploy_baseline(plan, phase, scope).items():
            pre[f"{phase.name}/{gate_name}"] = value
        release.baselines = pre
        rollout.save()
        rollout.notify(
            f"{phase.name}:started", Kind.PHASE_STARTED,
            f"{phase.name}: deploying {rollout.image} ({phase.environment.value}, {phase.canary_share:g}%)",
            phase=phase.name,
        )
        failure = deploy(rollout, phase)
        rollout.record("deployed", phase=phase.name, error=failure)
        if failure:
            log.error("deploy failed: %s", failure)
            return finish(after_deploy_failure(phase, f"deploy did not become ready — {failure}"))
        if phase.checks:
            result.checks = run_phase_checks(list(phase.checks))
            action = after_checks(phase, [f"{c.name}: {c.detail}" for c in result.checks if not c.passed])
            if action.step is not Step.CONTINUE:
                return finish(action)
        warmup = max(clock.to_wall(phase.initial_delay.total_seconds()), rt.min_warmup_wall)
        if warmup > 0:
            time.sleep(warmup)
        release.state, release.soak_started = SOAKING, clock.now()
        rollout.save()

    baselines = {
        k.split("/", 1)[1]: v for k, v in release.baselines.items() if k.startswith(phase.name + "/")
    }
    soak_started = release.soak_started or clock.now()
    soak_end = soak_started + max(phase.soak.total_seconds(), rt.min_soak_wall * clock.speed)
    # A floor keeps a mis-set clock from turning the soak into a busy loop against Prometheus.
    interval_wall = max(clock.to_wall(phase.interval.total_seconds()), rt.min_interval_wall, 0.05)
    progress = evidence.start_progress(rollout.release.id, phase.name)
    history: dict[str, list[Measurement]] = defaultdict(list)
    while True:
        round_started = time.monotonic()
        now = clock.now()
        measurements = measure_gates(plan, phase, scope, baselines, now, soak_started)
        result.rounds.append(measurements)
        for m in measurements:
            history[m.gate].append(m)
        evidence.publish_round(rollout.release.id, phase.name, len(result.rounds), measurements)
        done = now >= soak_end
        evidence.update_progress(progress, 100.0 * (now - soak_started) / max(phase.soak.total_seconds(), 1e-9))
        action = after_round(phase, history, soak_done=done)
        rollout.record(
            "round", phase=phase.name, round=len(result.rounds), step=action.step.value,
            outcomes={m.gate: m.outcome.value for m in measurements}, reason=action.reason,
            progress=min(1.0, (now - soak_started) / max(soak_end - soak_started, 1e-9)),
        )
        if action.step is not Step.CONTINUE:
            evidence.update_progress(progress, 100.0)
            log.info("%s: %s — %s", phase.name, action.step.value, action.reason)
            return finish(action)
        # A fixed cadence: the next round starts one interval after this one started, however
        # long the queries took, so "every 5m" stays every 5m.
        next_round = interval_wall - (time.monotonic() - round_started)
        time.sleep(max(0.0, min(next_round, clock.to_wall(soak_end - clock.now()))))
