"""The seed's "Rollback Procedures" as flows a person starts, and the "ROLLBACK CANDIDATE" alert
turned into one that decides.

Design decisions:

* One rollback, reused: every procedure here ends in ``flows.rollback.run_rollback``, the
  subflow a rollout's triggers start, so a manual undo is acted, verified (cluster, then the
  fired metrics over ``verify_window``), escalated and reported exactly as an automatic one.
  What this module adds is what a person-started rollback needs around it.
* The target's lock is the rollout's lock (``flows.rollout.lock_name``). A live rollout —
  running, or paused for an approval while its triggers are still watched — is never raced:
  the procedure is refused and says where to act instead (the approval form's reject rolls
  back). A finished record (promoted, halted, rolled back) has no driver, so the lock is
  free or about to be. An unfinished record whose flow run is gone (crashed, cancelled) is
  taken over: its lock is freed, as ``progressive-rollout --take-over`` would. The decision
  is ``decide.runbook_start``, read again once the lock is held, since a rollout may have
  started in between.
* The procedure records itself on the release record before acting (``flow-run`` names this
  run; ``run_rollback`` writes ``rolling-back`` and the reason), clears ``promoted-at`` after
  (a rolled-back release owes no more reviews), and writes ``rolled-back`` as a rollout does.
* Times are reported against the plan's ``rollback_budgets`` (the seed's 5 / 15 / 1 minutes):
  wall seconds from the request to the verified rollback — what a person waits — and plan
  seconds on the run's clock (the same in production; compressed in a rehearsal).
* ``rollback_candidate`` is started by the Prefect automation that an Alertmanager webhook's
  event triggers (``phasegate.entry.alerts``). Alertmanager repeats a firing alert every
  ``repeat_interval`` and a receiver may have several replicas, so the flow dedupes durably:
  the alert's fingerprint and ``startsAt`` go on the record, and a second run for the same
  key does nothing. What it does is ``decide.after_alert``: roll back at once, or pause with
  the evidence and the three procedures as choices.
"""

from __future__ import annotations

import time
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.context import Rollout, target_ref
from flows.lock import LockHeld, ensure_lock, hold
from flows.rollback import RollbackResult, run_rollback
from flows.rollout import lock_name
from phasegate import runctx
from phasegate.decide import AlertStep, after_alert, runbook_start
from phasegate.durations import format_duration
from phasegate.errors import PermanentError
from phasegate.notify import Kind, Severity
from phasegate.plan import RolloutPlan, Strategy, load_plan
from phasegate.record import ANN_ALERTS_HANDLED, ANN_ROLLED_BACK, Release, dumps, loads
from tasks import evidence
from tasks.cluster import annotate_release, read_target
from tasks.metrics import measure_gates, scope_for

# Flow-run states in which a run still drives (or may yet drive) its rollout.
LIVE_STATES = {"RUNNING", "PAUSED", "PENDING", "SCHEDULED", "CANCELLING"}
ALERT_KEYS_KEPT = 20
DEPLOYMENT_OF = {Strategy.FULL_UNDO: "rollback-immediate", Strategy.CANARY_ONLY: "rollback-canary",
                 Strategy.FEATURE_FLAG: "rollback-feature-flag"}


class RunbookRefused(PermanentError):
    """The procedure may not act now (a live rollout holds the target, or nothing to roll back)."""


def _this_run() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def flow_run_live(flow_run_id: str | None) -> bool:
    """Whether the flow run a record names is still running or waiting (paused, scheduled)."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):
        return False
    return state is not None and state.type.value in LIVE_STATES


def _free_lock(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def _check(plan: RolloutPlan, strategy: Strategy, image: str | None, me: str | None) -> tuple[Release, Any]:
    state = read_target(target_ref(plan))
    record = Release.from_annotations(state.stable.annotations)
    if record is not None and image and record.image != image:
        raise RunbookRefused(f"{target_ref(plan)} carries release {record.id}, not {image}")
    live = record is not None and record.flow_run != me and not record.finished and flow_run_live(record.flow_run)
    start = runbook_start(plan, strategy, record, state, live)
    if not start.ok:
        raise RunbookRefused(f"{target_ref(plan)}: {start.reason}")
    assert record is not None
    return record, start


def roll_back_release(plan: RolloutPlan, strategy: Strategy, *, reason: str, gates: list[str] | None = None,
                      image: str | None = None, lock_timeout_seconds: float = 10.0,
                      started_wall: float | None = None) -> dict[str, Any]:
    """Take the target's lock and run ``run_rollback`` on the release the record names."""
    log = get_run_logger()
    clock = runctx.get().clock
    started_wall = time.time() if started_wall is None else started_wall
    started_plan = clock.now() - clock.speed * (time.time() - started_wall)
    me = _this_run()
    _record, start = _check(plan, strategy, image, me)
    name = lock_name(plan)
    ensure_lock(name)
    if start.take_over:
        log.warning("the run recorded on %s is gone; freeing %s", target_ref(plan), name)
        _free_lock(name)
    try:
        with hold(name, lock_timeout_seconds):
            record, start = _check(plan, strategy, image, me)
            result = _act(plan, strategy, record, start.phase, reason, list(gates or []), me)
    except LockHeld:
        raise RunbookRefused(f"a live rollout of {target_ref(plan)} holds the lock {name!r}; "
                             "nothing was done") from None
    return _report(plan, strategy, record, result, started_wall, started_plan)


def _act(plan: RolloutPlan, strategy: Strategy, record: Release, phase: str, reason: str, gates: list[str],
         me: str | None) -> RollbackResult:
    rollout = Rollout(plan, record.image, record, flow_run_id=me)
    # A new rollback of this release is news again, even if an earlier one was reported.
    record.notified = [k for k in record.notified if ":rollback-" not in k]
    record.flow_run = me
    rollout.save()
    rollout.record("runbook_started", strategy=strategy.value, phase=phase, reason=reason)
    result = run_rollback(plan, record.image, phase, strategy, reason, gates, me)
    rollout.reload()
    rollout.release.promoted_at = rollout.release.promoted_wall = None
    rollout.save()
    annotate_release(rollout.ref.namespace, rollout.ref.deployment, {ANN_ROLLED_BACK: f"{phase}:{strategy.value}"})
    return result


def _report(plan: RolloutPlan, strategy: Strategy, record: Release, result: RollbackResult, started_wall: float,
            started_plan: float) -> dict[str, Any]:
    budget = plan.rollback_budgets.of(strategy).total_seconds()
    wall = result.completed_wall - started_wall
    plan_s = result.completed_plan - started_plan
    report = {
        "release": record.id, "image": record.image, "strategy": strategy.value, "phase": result.phase,
        "final_strategy": result.final_strategy, "ok": result.ok, "cluster_verified": result.cluster_verified,
        "metrics_recovered": result.metrics_recovered, "reason": result.reason, "detail": result.detail,
        "wall_seconds": wall, "plan_seconds": plan_s, "budget_seconds": budget,
        "within_budget": wall <= budget, "started_wall": started_wall, "rollback_started_wall": result.started_wall,
        "completed_wall": result.completed_wall,
    }
    verdict = "within" if report["within_budget"] else "OVER"
    text = (f"{strategy.value} of {record.id} {'verified' if result.ok else 'NOT verified'} in {wall:.1f} s "
            f"({verdict} the {format_duration_s(budget)} budget; {plan_s:.0f} s plan time)")
    rollout = Rollout(plan, record.image, record)
    rollout.reload()
    rollout.notify(f"{result.phase}:runbook-{strategy.value}-{int(started_wall)}", Kind.ROLLBACK_VERIFIED if result.ok
                   else Kind.ROLLBACK_FAILED, text, severity=Severity.INFO if result.ok else Severity.CRITICAL,
                   phase=result.phase, fields={"wall": f"{wall:.1f}s", "budget": format_duration_s(budget)})
    evidence.publish_markdown(record.id, f"runbook-{strategy.value.replace('_', '-')}", f"# {text}\n", "runbook")
    get_run_logger().info(text)
    return report


def format_duration_s(seconds: float) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds))


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"{DEPLOYMENT_OF.get(Strategy(p.get('strategy', 'full_undo')), 'rollback')} {p.get('reason', '')}"[:100]


@flow(name="manual-rollback", flow_run_name=_run_name)
def manual_rollback(plan_path: str, strategy: Strategy, reason: str, requested_by: str, image: str | None = None,
                    lock_timeout_seconds: float = 10.0) -> dict[str, Any]:
    """Roll the plan's target back with one of the seed's procedures (see the module docstring)."""
    started = time.time()
    plan = load_plan(plan_path)
    why = f"manual ({requested_by}): {reason}"
    return roll_back_release(plan, Strategy(strategy), reason=why, image=image,
                             lock_timeout_seconds=lock_timeout_seconds, started_wall=started)


class AlertDecision(RunInput):
    """A person's answer to a rollback candidate: which procedure, if any."""

    procedure: Literal["full_undo", "canary_only", "feature_flag", "no action"]
    decided_by: str
    comment: str = ""


def _alert_key(alert: dict[str, Any]) -> str:
    return f"{alert.get('fingerprint', '?')}@{alert.get('startsAt', '?')}"


def _parse_time(text: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _claim(plan: RolloutPlan, key: str) -> bool:
    """Note ``key`` on the Deployment; False if an earlier run already did (a repeat)."""
    ref = target_ref(plan)
    handled = loads(read_target(ref).stable.annotations.get(ANN_ALERTS_HANDLED), [])
    if key in handled:
        return False
    annotate_release(ref.namespace, ref.deployment, {ANN_ALERTS_HANDLED: dumps([*handled, key][-ALERT_KEYS_KEPT:])})
    return True


def _candidate_name() -> str:
    from prefect.runtime import flow_run

    alert = flow_run.parameters.get("alert") or {}
    return f"rollback-candidate {(alert.get('labels') or {}).get('alertname', '?')}"


@flow(name="rollback-candidate", flow_run_name=_candidate_name)
def rollback_candidate(plan_path: str, alert: dict[str, Any]) -> dict[str, Any]:
    """Act on one firing alert for the plan's release: roll back at once, or ask a person."""
    started = time.time()
    plan = load_plan(plan_path)
    rt = runctx.get()
    labels, annotations = alert.get("labels") or {}, alert.get("annotations") or {}
    name, severity = labels.get("alertname", "?"), labels.get("severity", "warning")
    key = _alert_key(alert)
    out: dict[str, Any] = {"alert": name, "key": key, "severity": severity, "started_wall": started}
    if not _claim(plan, key):
        out.update(step="duplicate", reason=f"alert {key} was handled by an earlier run")
        return out
    record = Release.from_annotations(read_target(target_ref(plan)).stable.annotations)
    fired = _parse_time(alert.get("startsAt"))
    action = after_alert(plan, record, severity, labels.get("trigger"), started if fired is None else fired)
    out.update(step=action.step.value, reason=action.reason)
    if action.step is AlertStep.IGNORE or record is None:
        return out
    phase = plan.phase(action.phase)
    values = measure_gates(plan, phase, scope_for(plan, phase), record.baselines, rt.clock.now())
    table = evidence.markdown_table(values, with_query=True)
    lines = [f"# {name} ({severity}) on {record.id}", "", annotations.get("message", ""), "",
             "| label | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(labels.items())],
             "", f"Started {alert.get('startsAt', '?')}; {action.reason}.", "", f"## Gates of {phase.name} now",
             "", table]
    evidence_md = "\n".join(lines)
    evidence.publish_markdown(record.id, f"alert-{name}", evidence_md, "rollback candidate")
    gates = [labels["trigger"]] if labels.get("trigger") in {t.name for t in phase.triggers} else []
    reason = f"alert {name} ({severity}): {annotations.get('message', '')}".strip()
    if action.step is AlertStep.ROLL_BACK:
        assert action.strategy is not None
        try:
            out["rollback"] = roll_back_release(plan, action.strategy, reason=reason, gates=gates,
                                                started_wall=started)
        except RunbookRefused as exc:
            # A live rollout watches its own triggers and rolls itself back; never race it.
            out.update(step="refused", reason=str(exc))
            return out
        if fired is not None:
            out["fired_wall"] = fired
            out["rollback_started_after"] = out["rollback"]["rollback_started_wall"] - fired
        return out
    rollout = Rollout(plan, record.image, record, flow_run_id=_this_run())
    rollout.notify(f"alert:{key}", Kind.APPROVAL_NEEDED,
                   f"ROLLBACK CANDIDATE: {name} ({severity}) on {record.id}; {action.reason}. Choose a procedure "
                   "in the Prefect UI.", severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link())
    description = (f"{evidence_md}\n\nChoose a procedure: **full_undo** (Immediate, seed < 5 min), **canary_only** "
                   f"(Partial, < 15 min; only while a canary runs), **feature_flag** (< 1 min), or **no action**. "
                   f"The plan suggests **{action.strategy.value if action.strategy else 'full_undo'}**.")
    me = _this_run()
    if me:
        rt.tell_pause(me, f"alert-{name}", list(AlertDecision.model_fields), "alert")
    answer: AlertDecision = pause_flow_run(
        wait_for_input=AlertDecision.with_initial_data(description=description),
        timeout=int(max(rt.clock.to_wall(plan.alert_response.decide_timeout.total_seconds()), 30)),
        poll_interval=rt.pacing.approval_poll_seconds, key=f"alert-{key}"[:100],
    )
    out["decision"] = {"procedure": answer.procedure, "by": answer.decided_by, "comment": answer.comment}
    if answer.procedure == "no action":
        return out
    why = f"{reason}; decided by {answer.decided_by}" + (f": {answer.comment}" if answer.comment else "")
    out["rollback"] = roll_back_release(plan, Strategy(answer.procedure), reason=why, gates=gates)
    return out
