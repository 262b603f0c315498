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
from phasegate.plan import load_plan
from phasegate.ports import MetricsProvider
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
) -> dict[str, Any]:
    """Run the rollout flow once in an already running world (tests inspect the world after).

    ``metrics`` and ``notifier`` replace the world's own for this run, e.g. with adapters
    built from ``PHASEGATE_PROMETHEUS_*`` and ``SLACK_*`` as a production run builds them.
    ``pacing`` replaces the world's floors, e.g. none per round to run a plan's real number
    of rounds on a fast clock. ``hold_floor``: the floor of a pause left unanswered (a held
    phase, a halted rollout), when it should differ from ``approval_floor``."""
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
