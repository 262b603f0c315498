"""``phasegate rehearse``: the real rollout flow, run against a loopback world.

The world (``phasegate.rehearsal.world``) is the cluster, workload and monitoring stand-ins;
this module sets the run context to that world and starts the flows, which makes it entry
code: the library below it never starts a flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from phasegate import runctx
from phasegate.notify import Notifier
from phasegate.plan import Environment, RolloutPlan, load_plan
from phasegate.ports import Cluster, MetricsProvider, TargetRef
from phasegate.record import PhaseState, Release, rollout_id
from phasegate.rehearsal.world import DEFAULT_SPEED, Approver, World, clamping_report, timings, world
from phasegate.runctx import EventObserver, Pacing


def rehearse(
    plan_path: str | Path,
    *,
    scenario: str = "healthy",
    speed: float = DEFAULT_SPEED,
    approve: str = "auto",
    image: str | None = None,
    notifier: Notifier | None = None,
    report_path: str | Path | None = None,
    approval_floor: float | None = None,
    lock_timeout_seconds: float = 30.0,
    on_event: EventObserver | None = None,
    workload_file: str | Path | None = None,
    before_run: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the real rollout flow for ``plan_path`` against a fresh loopback world.

    ``workload_file``: levels for the workload derived from the plan's queries.
    ``before_run``: called once the world is up, before the first flow (the command waits
    there for the Prefect API it started beside the world)."""
    plan = load_plan(plan_path)
    # Cold: Prometheus discovers the pods (~5 s) while the API starts and the checklist runs.
    with world(plan, image=image, scenario=scenario, speed=speed, notifier=notifier,
               workload_file=workload_file, warm=False) as w:
        if before_run is not None:
            before_run()
        report = run_in(w, plan_path, approve=approve, approval_floor=approval_floor,
                        lock_timeout_seconds=lock_timeout_seconds, on_event=on_event)
    if report_path:
        write_report(report, report_path)
    return report


def stage_before(plan: RolloutPlan, phase_name: str, image: str, cluster: Cluster,
                 timeout_seconds: float = 60.0) -> None:
    """Leave the cluster as a rollout of ``image`` leaves it once every phase before
    ``phase_name`` has passed and been approved: each earlier phase's deploy done through the
    same adapter the flows use, and the release record saying the last of them was approved.

    A proof rehearses a later phase's triggers from here instead of replaying the phases
    before it (their own cases prove those): the flow resumes at ``phase_name`` exactly as it
    does after a restart, so the phase under test deploys, soaks and rolls back as in a
    rollout that got there, from the state that rollout would have left."""
    names = [p.name for p in plan.phases]
    if phase_name not in names:
        raise ValueError(f"the plan has no phase {phase_name!r}; its phases: {', '.join(names)}")
    earlier = plan.phases[:names.index(phase_name)]
    if not earlier:
        return
    ref = TargetRef(plan.target.namespaces.production, plan.target.deployment, plan.target.container)
    state = cluster.read_target(ref)
    total = plan.target.replicas or state.stable.replicas
    release = Release(rollout_id(plan.name, image), image, state.stable.image, total, plan=plan.name)
    for phase in earlier:
        target = TargetRef(plan.namespace(phase), ref.deployment, ref.container)
        if phase.environment is Environment.STAGING:
            cluster.set_image(target, image)
            cluster.wait_ready(target.namespace, target.deployment, timeout_seconds)
        elif phase.has_canary:
            cluster.set_canary(ref, image, phase.canary_share, total, timeout_seconds)
            cluster.wait_ready(ref.namespace, ref.canary, timeout_seconds)
            cluster.wait_ready(ref.namespace, ref.deployment, timeout_seconds)
        else:
            raise ValueError(f"phase {phase.name!r} takes the new version to 100%; no phase can follow it")
    release.phase, release.state = earlier[-1].name, PhaseState.APPROVED
    cluster.annotate(ref.namespace, ref.deployment, release.annotations())


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """The ``--report`` file: the run's report as JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    return out


def run_in(
    w: World,
    plan_path: str | Path,
    *,
    approve: str | Approver = "auto",
    approval_floor: float | None = None,
    hold_floor: float | None = None,
    lock_timeout_seconds: float = 30.0,
    on_event: EventObserver | None = None,
    metrics: MetricsProvider | None = None,
    notifier: Notifier | None = None,
    pacing: Pacing | None = None,
    lock_scope: str = "",
    soak_floor: float | None = None,
    start_at: str | None = None,
) -> dict[str, Any]:
    """Run the rollout flow once in an already running world (tests inspect the world after).

    ``metrics`` and ``notifier`` replace the world's own for this run, e.g. with adapters
    built from ``PHASEGATE_PROMETHEUS_*`` and ``SLACK_*`` as a production run builds them.
    ``pacing`` replaces the world's floors, e.g. none per round to run a plan's real number
    of rounds on a fast clock. ``hold_floor``: the floor of a pause left unanswered (a held
    phase, a halted rollout), when it should differ from ``approval_floor``. ``start_at``: a
    phase to begin at, the earlier ones left on the cluster as passed and approved
    (``stage_before``), which the flow resumes from as after a restart."""
    approver = approve if isinstance(approve, Approver) else Approver(approve)
    # Wall seconds an approval pause lasts at least: long enough for the API approver under
    # load, short enough that a deliberate timeout (or an unanswered hold) ends quickly.
    floor = approval_floor if approval_floor is not None else {"ui": 900.0, "timeout": 5.0}.get(approver.mode, 15.0)
    approver.patience = max(approver.patience, floor)
    ctx = w.run_context(approval_floor=floor, hold_floor=hold_floor, on_pause=approver, on_event=on_event,
                        metrics=metrics, notifier=notifier)
    if pacing is not None:
        ctx = ctx.with_(pacing=pacing)
    if lock_scope:
        ctx = ctx.with_(lock_scope=lock_scope)
    if soak_floor is not None:
        ctx = ctx.with_(pacing=replace(ctx.pacing, min_soak_wall=max(ctx.pacing.min_soak_wall, soak_floor)))
    # Imported here, not at the top: Prefect and the flows take 1.5-2 s to import, which a
    # ``rehearse`` spends inside the world, while Prometheus discovers its pods.
    from flows.checklist import pre_deployment_checklist
    from flows.rollout import run_rollout

    started_wall = time.time()
    with runctx.use(ctx):
        checklist = w.plan.checklist
        if checklist is not None and checklist.required and checklist.items:
            pre_deployment_checklist(str(plan_path), image=w.image, timeout_seconds=int(max(floor, 30)),
                                     poll_interval_seconds=ctx.pacing.approval_poll_seconds, rehearsal=True)
        if start_at is not None:
            stage_before(w.plan, start_at, w.image, ctx.cluster)
        w.warm_up()
        report = run_rollout(str(plan_path), w.image, lock_timeout_seconds=lock_timeout_seconds)
    report["scenario"] = w.scenario.name
    report["approvals_sent"] = approver.answers
    report["timings"] = timings(report, w)
    report["pacing"] = clamping_report(w.plan, w.clock.speed, ctx.pacing)
    report["monitoring"] = w.monitoring_health(started_wall)
    notifications = getattr(ctx.notifier, "sent", None)
    if notifications is not None:
        report["notifications_sent"] = [
            {"kind": n.kind.value, "severity": n.severity.value, "phase": n.phase, "text": n.text}
            for n in notifications
        ]
    return report
