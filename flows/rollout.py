"""The parent flow: one progressive rollout of a plan's target to a new image.

    load plan → preflight (nothing deployed unless it passes) → per-target lock →
    for each phase: phase subflow → [approval pause] → next … → promoted
                         └─ trigger / reject / timeout / failed deploy → rollback subflow

Two locks guard a target. A Prefect global concurrency limit named after the target
(``flows.lock``: a missing limit is created, never silently skipped) makes a second rollout
wait and then be refused. The release record on the Deployment is the durable one: if a
different rollout's record is unfinished, this one is refused even if the Prefect lease
has expired with a dead process. The same rollout's unfinished record means *resume*:
finished phases are not redeployed and their notifications are not sent again.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed, State

from flows.approval import ApprovalRecord, await_approval, watch_while_halted
from flows.approval import evidence_table as approval_evidence
from flows.checklist import checklist_confirmed
from flows.context import Rollout, target_ref
from flows.lock import LockHeld, ensure_lock, hold
from flows.phase import PhaseResult, run_phase
from flows.rollback import RollbackResult, run_rollback
from phasegate import capacity, drift, runctx
from phasegate.decide import Action, Decision, Start, Step, after_approval, preflight_problems, resume_point
from phasegate.errors import PermanentError, PlanError, TargetNotFound
from phasegate.notify import Kind, Severity
from phasegate.plan import Phase, RolloutPlan, Strategy, load_plan
from phasegate.ports import TargetRef, TargetState
from phasegate.record import ANN_ROLLED_BACK, PhaseState, Release, rollout_id
from tasks import evidence
from tasks.checks import plan_checks
from tasks.cluster import annotate_release, check_permissions, read_target
from tasks.metrics import check_metrics

PROMOTED_OUTCOME, ROLLED_BACK_OUTCOME, HALTED_OUTCOME = "promoted", "rolled_back", "halted"
# The name of the flow run's final state per outcome, what the Runs list shows. A halted
# rollout is Failed-type, not Paused: the run has ended (nothing watches the release any
# more, the process may exit), a Paused run would offer a Resume button that resumes nothing,
# and Paused counts as live for the runbooks and for a resuming rollout (flows/runbook.py,
# ``close_superseded_run``), which must act on a halted release.
STATE_NAMES = {PROMOTED_OUTCOME: "Promoted", ROLLED_BACK_OUTCOME: "Rolled back", HALTED_OUTCOME: "Halted"}
SLACK_AUTH_ERRORS = ("invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
                     "missing_scope", "channel_not_found", "not_in_channel")


class PreflightFailed(PermanentError):
    """Something the rollout needs is missing or wrong; nothing was deployed."""


class RolloutRefused(PermanentError):
    """Another rollout holds this target."""


def lock_name(plan: RolloutPlan) -> str:
    scope = runctx.get().lock_scope
    return f"phasegate:{scope + ':' if scope else ''}{plan.target.namespaces.production}.{plan.target.deployment}"


def preflight(plan: RolloutPlan, image: str, plan_path: str | None = None) -> TargetRef:
    """Read what preflight needs; ``decide.preflight_problems`` says what stops the rollout.
    ``plan_path``: the plan's file, for the lines check problems name."""
    ref = target_ref(plan)
    refs = [ref] + [TargetRef(plan.namespace(p), ref.deployment, ref.container) for p in plan.phases]
    targets: dict[str, TargetState | str] = {}
    denied: dict[str, list[str]] = {}
    for r in {(r.namespace, r.deployment): r for r in refs}.values():
        try:
            targets[str(r)] = state = read_target(r)
        except TargetNotFound as exc:
            targets[str(r)] = str(exc)
        except Exception as exc:
            targets[str(r)] = f"cluster unreachable: {type(exc).__name__}: {exc}"
            break
        else:
            flag = plan.feature_flag.configmap if plan.feature_flag else None
            runs_canary = any(p.has_canary and plan.namespace(p) == r.namespace for p in plan.phases)
            hpa = state.autoscaler.name if state.autoscaler else None
            denied[r.namespace] = check_permissions(r, flag.name if flag else None, runs_canary, hpa)
    required = plan.checklist is not None and plan.checklist.required and bool(plan.checklist.items)
    production = targets.get(str(ref))
    confirmed = (
        # A target that could not be read is reported above; no second line for it.
        not isinstance(production, TargetState)
        or checklist_confirmed(plan, image, dict(production.stable.annotations))
    )
    slack_problem = None
    status = runctx.get().notifier.check_auth()
    if not status.ok:
        # A token Slack refuses means nobody would hear of a rollback: fix it first. An
        # outage is only an outage: notifications never stop a rollout, so go on.
        if any(code in status.detail for code in SLACK_AUTH_ERRORS):
            slack_problem = status.detail
        else:
            get_run_logger().warning("Slack is unavailable (%s); the rollout goes on without it", status.detail)
    reachable = not any(isinstance(t, str) and t.startswith("cluster unreachable") for t in targets.values())
    problems = preflight_problems(
        targets=targets, denied=denied, checklist_required=required, checklist_confirmed=confirmed,
        metric_problems=check_metrics(plan), slack_problem=slack_problem, image=image,
        # Which checks go through the API server's proxy is logged there, before any deploy.
        check_problems=plan_checks(plan, plan_path) if reachable else (),
    )
    if isinstance(production, TargetState) and production.stable.replicas > 0:
        problems += share_problems(plan, production)
    if problems:
        raise PreflightFailed("preflight failed, nothing was deployed:\n- " + "\n- ".join(problems))
    return ref


def share_problems(plan: RolloutPlan, state: TargetState) -> list[str]:
    """Each canary phase's real share at the live replica count, logged; those too far off
    the plan, as problems."""
    total = plan.target.replicas or drift.observed_total(state)
    if state.autoscaler is not None:
        a = state.autoscaler
        get_run_logger().info(
            "HPA %s scales %s (%d–%d replicas): each canary phase narrows it to stable's share, keeps the "
            "canary at its share beside it each round, and restores it when the canary goes", a.name,
            state.stable.name, *(a.original_bounds or (a.min_replicas, a.max_replicas)))
        if a.scaling_stopped and a.canary_autoscaler:
            get_run_logger().info("HPA %s does not scale while the mirror an earlier phasegate made for the canary "
                                  "picks the same pods; the first canary phase deletes that mirror", a.name)
    shares = plan.shares(total)
    for share in shares:
        get_run_logger().info("at %d replica(s) %s", total, share.describe())
    stopped = []
    if state.autoscaler is not None and state.autoscaler.scaling_stopped and not state.autoscaler.canary_autoscaler:
        # A rollout would follow no load, and every canary phase would halt on it as drift.
        stopped = [f"HPA {state.autoscaler.name} does not scale ({state.autoscaler.scaling_stopped}); "
                   "give each HPA pods no other HPA's selector picks, then run again"]
    return stopped + [f"at {total} replica(s) {message}"
                      for _, message in capacity.share_problems(shares, plan.target.share_tolerance)]


def run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"rollout {p.get('image', '?')}"


def phase_report(result: PhaseResult) -> dict[str, Any]:
    return {
        "name": result.phase,
        "outcome": result.action.step.value,
        "reason": result.action.reason,
        "started_plan": result.started_plan,
        "ended_plan": result.ended_plan,
        "started_wall": result.started_wall,
        "ended_wall": result.ended_wall,
        "checks": [asdict(c) for c in result.checks],
        "rounds": [
            [
                {"gate": m.gate, "outcome": m.outcome.value, "value": m.value, "baseline": m.baseline,
                 "compared": m.compared, "bound": m.bound, "at": m.at}
                for m in rnd
            ]
            for rnd in result.rounds
        ],
    }


def take_over_lock(plan: RolloutPlan, ref: TargetRef, image: str, name: str) -> bool:
    """Free the target's slot held by a dead run of *this same* rollout.

    Prefect leases last at least 60 s, so a SIGKILLed run blocks its own restart for up to
    a minute. An operator who knows the old process is gone may take over (as with
    ``terraform force-unlock``) — but only from the same plan and image, per the record on
    the cluster; another rollout's lock is never touched.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    release = Release.from_annotations(read_target(ref).stable.annotations)
    if release is None or release.finished or release.id != rollout_id(plan.name, image):
        return False
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    get_run_logger().warning("took over %s from an earlier run of %s (%s)", name, release.id, release.state)
    return True


def close_superseded_run(dead: str, successor: str | None) -> None:
    """Mark the flow run this one took over from as Crashed in Prefect.

    We only get here holding the target's lock, so that run is gone (its lease lapsed, or an
    operator took over). Nobody told Prefect: it still shows the run Running or Paused,
    and a paused one still offers its approval form — an answer there moves nothing. Closing
    it leaves one run to look at and one form to fill in. Best effort: the rollout goes on.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    log = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(dead)).state
            if state is not None and state.is_final():
                return
            client.set_flow_run_state(
                UUID(dead), Crashed(message=f"superseded: flow run {successor} resumed this rollout"), force=True
            )
        log.warning("flow run %s was left %s by a dead process; marked Crashed", dead, state.name if state else "?")
    except Exception as exc:  # never let bookkeeping of a dead run stop the live one
        log.warning("could not close superseded flow run %s: %s", dead, exc)


def tag_run(*tags: str) -> None:
    """Add ``tags`` to this flow run, so the Runs list can be filtered by plan, target and
    outcome. Best effort: a tag is no reason to stop or fail a rollout."""
    from prefect.client.orchestration import get_client

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    try:
        with get_client(sync_client=True) as client:
            current = list(client.read_flow_run(ctx.flow_run.id).tags)
            client.update_flow_run(ctx.flow_run.id, tags=current + [t for t in tags if t not in current])
    except Exception as exc:
        get_run_logger().warning("could not tag flow run %s: %s", ctx.flow_run.id, exc)


def outcome_state(report: dict[str, Any]) -> State[dict[str, Any]]:
    """The run's final state for the report's outcome, the report as its result."""
    outcome = report["outcome"]
    tag_run(f"outcome:{outcome}")
    name = STATE_NAMES[outcome]
    if outcome == PROMOTED_OUTCOME:
        message = report.get("note") or f"{report['image']} promoted to 100% of {report['target']}"
    elif outcome == ROLLED_BACK_OUTCOME:
        rb = report["rollback"]
        message = (f"rolled back ({rb['final_strategy'] or rb['strategy']}) in {rb['phase']}: {rb['reason']}"
                   + ("" if rb["ok"] else "; the rollback is NOT verified"))
    else:
        message = f"halted in {report['halted']['phase']}: {report['halted']['reason']}"
    # The last line of the run's Logs tab says how it ended, in the words of its state.
    get_run_logger().info("%s: %s", name, message)
    state = Completed if outcome == PROMOTED_OUTCOME else Failed
    return state(name=name, message=message, data=report)


def report_of(state: State[dict[str, Any]]) -> dict[str, Any]:
    """The report of a finished rollout run whatever its outcome; raises what a refused or
    broken run raised (PreflightFailed, RolloutRefused, ...)."""
    # _sync: Prefect dispatches result() to its coroutine whenever an event loop runs in the
    # thread (Playwright's sync API, a notebook), and the caller wants the report, not a coroutine.
    result = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    if isinstance(result, BaseException):
        raise result
    return cast("dict[str, Any]", result)


def run_rollout(plan_path: str, image: str, lock_timeout_seconds: float = 30.0,
                take_over: bool = False) -> dict[str, Any]:
    """Run the rollout flow and hand back its report: a rolled-back or halted run ends in a
    Failed-type state, which calling the flow plainly would raise."""
    state = progressive_rollout(plan_path, image, lock_timeout_seconds, take_over, return_state=True)
    return report_of(cast("State[dict[str, Any]]", state))


@flow(name="progressive-rollout", flow_run_name=run_name)
def progressive_rollout(
    plan_path: str, image: str, lock_timeout_seconds: float = 30.0, take_over: bool = False
) -> State[dict[str, Any]]:
    """Roll ``image`` out through every phase of the plan at ``plan_path``.

    The run ends Completed "Promoted", Failed "Rolled back" or Failed "Halted" (``STATE_NAMES``),
    with the report as its result either way (``run_rollout`` / ``report_of``), tagged
    ``plan:``, ``target:`` and ``outcome:``. A refused or broken run raises.

    ``take_over``: the previous run of this same rollout is known to be dead; free its lock
    instead of waiting for its lease to expire.
    """
    log = get_run_logger()
    try:
        plan = load_plan(plan_path)
    except PlanError as exc:
        raise PreflightFailed("the plan is invalid, nothing was deployed:\n" + "\n".join(exc.problems)) from None
    ref = target_ref(plan)
    tag_run(f"plan:{plan.name}", f"target:{ref}")
    if not _finishing_a_rollback(plan, ref, image):
        # A rollback under way is finished whatever preflight would say now (Prometheus
        # down, a checklist since withdrawn): stopping it halfway helps nobody.
        preflight(plan, image, plan_path)
    name = lock_name(plan)
    ensure_lock(name)
    if take_over:
        take_over_lock(plan, ref, image, name)
    try:
        # A failed lease renewal is logged, not raised (flows.lock): a short Prefect API outage
        # must not cancel a rollout mid-rollback.
        with hold(name, lock_timeout_seconds):
            return outcome_state(drive(plan, ref, image))
    except LockHeld:
        log.error("another rollout of %s holds the lock", ref)
        raise RolloutRefused(f"another rollout of {ref} is in progress (lock {name!r})") from None


def _finishing_a_rollback(plan: RolloutPlan, ref: TargetRef, image: str) -> bool:
    try:
        release = Release.from_annotations(read_target(ref).stable.annotations)
    except Exception:  # preflight reports the cluster problem
        return False
    return (release is not None and release.id == rollout_id(plan.name, image)
            and release.state is PhaseState.ROLLING_BACK and release.rollback is not None)


def drive(plan: RolloutPlan, ref: TargetRef, image: str) -> dict[str, Any]:
    log = get_run_logger()
    rt = runctx.get()
    state = read_target(ref)
    rid = rollout_id(plan.name, image)
    existing = Release.from_annotations(state.stable.annotations)
    point = resume_point(plan, rid, image, existing, state)
    if point.start is Start.REFUSE:
        if existing is not None and existing.id != rid:
            raise RolloutRefused(f"{ref}: {point.reason}")
        raise PreflightFailed(f"{ref}: {point.reason}")
    if point.start is Start.DONE:
        return {"outcome": PROMOTED_OUTCOME, "rollout": rid, "note": point.reason, "phases": []}
    resume = point.start in (Start.RESUME, Start.ROLLBACK)
    if resume:
        assert existing is not None
        release = existing
        log.info("resuming %s: %s", rid, point.reason)
    else:
        total = plan.target.replicas or state.stable.replicas + (state.canary.replicas if state.canary else 0)
        release = Release(rid, image, state.stable.image, total, plan=plan.name)
    ctx = FlowRunContext.get()
    rollout = Rollout(plan, image, release, flow_run_id=str(ctx.flow_run.id) if ctx and ctx.flow_run else None)
    superseded = release.flow_run if resume and release.flow_run not in (None, rollout.flow_run_id) else None
    release.flow_run = rollout.flow_run_id
    rollout.save()
    if superseded:
        close_superseded_run(superseded, rollout.flow_run_id)
    rollout.notify(
        "rollout:started", Kind.ROLLOUT_STARTED,
        f"Rollout of {image} to {ref} {'resumed' if resume else 'started'}: "
        + " → ".join(f"{p.name} ({p.canary_share:g}%)" for p in plan.phases),
        fields={"plan": plan.name, "previous": release.previous_image}, links=rollout.ui_link(),
    )
    report: dict[str, Any] = {
        "rollout": rid, "plan": plan.name, "image": image, "previous_image": release.previous_image,
        "target": str(ref), "flow_run_id": rollout.flow_run_id, "resumed": resume, "phases": [], "approvals": [],
        "rollback": None, "started_wall": time.time(), "speed": rt.clock.speed,
    }
    if point.start is Start.ROLLBACK:
        assert release.rollback is not None
        rb = release.rollback
        action = Action(Step.ROLLBACK, rb.reason, Strategy(rb.strategy), rb.gates)
        return finish_rollback(rollout, report, plan.phase(rb.phase), action)

    for index in range(point.phase_index, len(plan.phases)):
        phase = plan.phases[index]
        next_phase = plan.phases[index + 1] if index + 1 < len(plan.phases) else None
        resumed_here = resume and index == point.phase_index
        if resumed_here and point.skip_phase:
            continue
        if resumed_here and point.verdict is not None:
            action = Action(point.verdict, "resumed after a restart")
            evidence_md = "(the evidence is in the previous flow run)"
        else:
            result = run_phase(plan, image, phase.name, rollout.flow_run_id, resume=resumed_here)
            rollout.events.extend(result.events)
            rollout.reload()
            report["phases"].append(phase_report(result))
            evidence.publish_summary(plan, report)
            action = result.action
            evidence_md = approval_evidence(result.last_round)
            table = evidence.markdown_table(result.last_round, with_query=True)
            evidence.publish_markdown(
                rid, f"{phase.name}-summary", f"# {phase.name}: {action.step.value}\n\n{action.reason}\n\n{table}",
                f"{phase.name} summary",
            )
        if action.step is Step.ROLLBACK:
            rollout.notify(f"{phase.name}:failed", Kind.PHASE_FAILED, f"{phase.name} failed: {action.reason}",
                           severity=Severity.WARNING, phase=phase.name)
            return finish_rollback(rollout, report, phase, action)
        if action.step is Step.HALT:
            return finish_halt(rollout, report, phase, action.reason)
        release = rollout.release
        release.state = PhaseState.PASSED if action.step is Step.ADVANCE else PhaseState.HELD
        rollout.save()
        if action.step is Step.ADVANCE:
            rollout.notify(f"{phase.name}:passed", Kind.PHASE_PASSED, f"{phase.name} passed: {action.reason}",
                           phase=phase.name)
        # The last phase has no next one to approve, but its manual criteria still need a
        # person's word: they are asked before the release is promoted.
        asks = phase.approval.required and (next_phase is not None or bool(phase.manual_criteria))
        if action.step is Step.HOLD or asks:
            approval = await_approval(rollout, phase, next_phase, action, evidence_md)
            report["approvals"].append(_approval_report(approval))
            if approval.fired is not None:
                return finish_rollback(rollout, report, phase, approval.fired)
            decided = after_approval(phase, approval.decision, who=approval.approver, comment=approval.comment)
            if approval.decision is not Decision.TIMEOUT:
                kind = Kind.APPROVAL_GIVEN if approval.decision is Decision.APPROVE else Kind.APPROVAL_REFUSED
                rollout.notify(f"{phase.name}:decision", kind, f"{phase.name}: {decided.reason}", phase=phase.name)
            if decided.step is Step.ROLLBACK:
                return finish_rollback(rollout, report, phase, decided)
            if decided.step is Step.HALT:
                return finish_halt(rollout, report, phase, decided.reason)
        rollout.release.state = PhaseState.APPROVED
        rollout.save()
    return finish_promoted(rollout, report)


def _approval_report(a: ApprovalRecord) -> dict[str, Any]:
    return {"phase": a.phase, "decision": a.decision.value, "approver": a.approver, "comment": a.comment,
            "criteria": a.criteria, "refused": a.refused, "waited_wall": a.waited_wall,
            "fired": a.fired.reason if a.fired else None, "watch_rounds": a.watch_rounds}


def _close(rollout: Rollout, report: dict[str, Any], outcome: str) -> dict[str, Any]:
    report["outcome"] = outcome
    report["ended_wall"] = time.time()
    report["events"] = rollout.events
    report["notifications"] = [e for e in rollout.events if e["event"] == "notification"]
    return report


def finish_promoted(rollout: Rollout, report: dict[str, Any]) -> dict[str, Any]:
    rollout.release.state = PhaseState.PROMOTED
    rollout.release.promoted_at = runctx.get().clock.now()
    rollout.release.promoted_wall = time.time()
    rollout.save()
    rollout.notify("rollout:promoted", Kind.PROMOTED, f"{rollout.image} is promoted to 100% of {rollout.ref}",
                   links=rollout.ui_link())
    evidence.publish_summary(rollout.plan, report, "promoted")
    return _close(rollout, report, PROMOTED_OUTCOME)


def finish_rollback(rollout: Rollout, report: dict[str, Any], phase: Phase, action: Action) -> dict[str, Any]:
    assert action.strategy is not None
    result: RollbackResult = run_rollback(rollout.plan, rollout.image, phase.name, action.strategy, action.reason,
                                          list(action.gates), rollout.flow_run_id)
    rollout.events.extend(result.events)
    rollout.reload()
    rb = asdict(result)
    rb.pop("events")
    report["rollback"] = rb
    annotate_release(
        rollout.ref.namespace, rollout.ref.deployment, {ANN_ROLLED_BACK: f"{phase.name}:{action.strategy.value}"}
    )
    evidence.publish_summary(rollout.plan, report, "rolled back")
    return _close(rollout, report, ROLLED_BACK_OUTCOME)


def finish_halt(rollout: Rollout, report: dict[str, Any], phase: Phase, reason: str) -> dict[str, Any]:
    rollout.release.state = PhaseState.HALTED
    rollout.save()
    rollout.notify(f"{phase.name}:halted", Kind.HALTED, f"Rollout halted in {phase.name}: {reason}",
                   severity=Severity.WARNING, phase=phase.name, links=rollout.ui_link())
    # Halted is not unwatched: while the new version serves, its triggers are still measured.
    rollback = watch_while_halted(rollout, phase, reason)
    if rollback is not None:
        return finish_rollback(rollout, report, phase, rollback)
    report["halted"] = {"phase": phase.name, "reason": reason}
    evidence.publish_summary(rollout.plan, report, "halted")
    return _close(rollout, report, HALTED_OUTCOME)
