"""The approval pause between phases: a typed form in the Prefect UI, with the triggers
still watched.

Design decisions:

* The form is built from the plan at run time: the decision (an Approve and a Reject switch,
  exactly one on: phasegate/approval_form.py says why not a select) and ``approver`` have no
  default — a default would let an empty resume pass as a decision — and each of the
  phase's manual criteria is a switch that must be on to approve. Whether an
  answer is acceptable is ``decide.approval_answer``'s call; a refused answer is recorded
  and the run pauses again until the original deadline.
* For up to a day a canary serves part of production while the run waits for a person.
  Flagger goes on analysing in that state, and so does this: a watcher thread measures the
  phase's triggers on their own cadence for the whole pause. When one fails, the watcher
  ends the pause itself (resuming the run through the Prefect API, as a person would) and
  the run rolls back with that trigger's strategy — whatever a person answered at the same
  moment. The watcher reads metrics directly, not through Prefect tasks: task runs cannot
  start while their flow run is Paused.
* Reminders do not spam: one message when the pause starts, one at half the timeout, one at
  expiry.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import ConfigDict, Field, create_model

from flows.context import Rollout
from phasegate import approval_form as approval_form_fields
from phasegate import runctx, slack_approval
from phasegate.analysis import Measurement, Outcome
from phasegate.decide import Action, Decision, Step, after_round, approval_answer
from phasegate.durations import format_duration
from phasegate.notify import Kind, Severity, reminder_times
from phasegate.plan import Environment, Phase
from tasks import evidence
from tasks.metrics import measure_gates, scope_for

WATCHER = "phasegate (trigger watch)"
APPROVE, REJECT = approval_form_fields.APPROVE, approval_form_fields.REJECT
ROLLBACK, HAND_OVER = approval_form_fields.ROLLBACK, approval_form_fields.HAND_OVER
criterion_field = approval_form_fields.criterion_field


@dataclass
class ApprovalRecord:
    phase: str
    decision: Decision
    approver: str = ""
    comment: str = ""
    criteria: dict[str, bool] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    waited_wall: float = 0.0
    # A trigger that failed while the run waited: the rollback to do instead of any answer.
    fired: Action | None = None
    watch_rounds: int = 0
    sender: str = ""  # the Prefect account that sent the answer, where the server records one


class _Decided(RunInput):
    # The server refuses a resume with neither or both of the decision's switches on.
    model_config = ConfigDict(json_schema_extra=approval_form_fields.one_of(APPROVE, REJECT))


def approval_form(phase: Phase) -> type[RunInput]:
    """The Resume form: two decision switches, the approver, a comment, a switch per criterion.

    The field shapes are phasegate/approval_form.py's (why switches, why all required)."""
    camel = "".join(part.capitalize() for part in re.split(r"[-_]", phase.name))
    undo = (phase.approval.on_reject or phase.default_rollback).value
    fields: dict[str, Any] = {
        APPROVE: (bool, Field(title="Approve", description="Switch on to approve (with every criterion below). "
                              "Switch on exactly one of Approve and Reject.")),
        REJECT: (bool, Field(title="Reject", description=f"Switch on to reject: rolls back with {undo}.")),
        "approver": (str, Field(min_length=1, description="Who decides (on the plan's approver list, if it has one).")),
        "comment": (str, Field("", description="Why; recorded in the evidence and posted to Slack.")),
    }
    for i, text in enumerate(phase.manual_criteria):
        fields[criterion_field(i)] = (bool, Field(
            title=text, description="Required to approve: switch on once you have checked it."))
    return create_model(f"Approve{camel}", __base__=_Decided, **fields)


_BOUND = re.compile(r"^.+ (?P<op><=|>=|==|<|>) (?P<threshold>\S+)$")


def evidence_table(measurements: Sequence[Measurement]) -> str:
    """The last gate round for the Resume dialog, narrow enough for it.

    Prefect's markdown tables do not wrap and hide their scrollbar, so the artifact's six
    columns (value, baseline, compared, bound, ...) are cut off on the right of the ~450 px
    dialog. Here: gate, outcome, and the compared number against the bound's own operator and
    threshold (``3.2 < 20``); the phase's summary artifact keeps the full table."""
    lines = ["| gate | outcome | value vs bound |", "|---|---|---|"]
    for m in measurements:
        # The compared number is the one the bound speaks of (a delta or a ratio, else the value).
        shown = m.compared if m.compared is not None else m.value
        value = "no data" if shown is None else f"{shown:.6g}"
        bound = _BOUND.match(m.bound)
        versus = f"{value} {bound['op']} {bound['threshold']}" if bound else f"{value} ({m.bound or 'no bound'})"
        lines.append(f"| {m.gate} | {m.outcome.value} | {versus} |")
    return "\n".join(lines) if measurements else "(no gate round)"


def watch_note(phase: Phase) -> str:
    if not phase.triggers:
        return ""
    return (f"While this waits, the {len(phase.triggers)} rollback trigger(s) are still measured every "
            f"{format_duration(phase.trigger_every)}: one that fires rolls back without waiting for anyone.")


def describe(rollout: Rollout, phase: Phase, next_phase: Phase | None, action: Action, evidence_md: str) -> str:
    if next_phase is None:
        doing = f"Approving promotes **{rollout.image}** as the release of {rollout.ref}."
    else:
        doing = (
            f"Approving starts **{next_phase.name}**: {next_phase.environment.value}, "
            f"{next_phase.canary_share:g}% on {rollout.image}."
        )
    undo = (phase.approval.on_reject or phase.default_rollback).value
    # Plain bullets: a markdown "- [ ]" renders as a checkbox nobody can tick, right above
    # the form's real switches.
    criteria = "\n".join(f"- {c}" for c in phase.manual_criteria) or "- (none)"
    return "\n".join([
        f"## {phase.name}: {action.step.value}",
        action.reason,
        "",
        doing,
        f"Rejecting rolls back with **{undo}**.",
        watch_note(phase),
        "",
        "### Criteria to attest (switch each on in the form to approve)",
        criteria,
        "",
        "### Gate evidence (last round)",
        evidence_md,
        "",
        "Values, baselines and queries of every gate: the phase's summary artifact.",
    ])


def slack_buttons(rollout: Rollout, phase: Phase) -> list[tuple[str, str, str]]:
    """Approve/Reject buttons for plans that map Slack users to approvers (slack_approval.py)."""
    slack = rollout.plan.notifications.slack
    if slack is None or not slack.approvers or not rollout.flow_run_id:
        return []
    value = slack_approval.button_value(rollout.flow_run_id, phase.name)
    attest = " (attests every criterion above)" if phase.manual_criteria else ""
    return [(slack_approval.APPROVE, f"Approve{attest}", value), (slack_approval.REJECT, "Reject", value)]


def _remind(rollout: Rollout, phase: Phase, started: float, timeout_wall: float, stop: threading.Event) -> None:
    for i, at in enumerate(reminder_times(started, timeout_wall)):
        if stop.wait(max(0.0, at - time.time())):
            return
        text = (
            f"Still waiting for approval of {phase.name} (half the time is gone)"
            if i == 0 else f"Approval of {phase.name} expires now"
        )
        rollout.notify(f"{phase.name}:reminder-{i}", Kind.APPROVAL_REMINDER, text, phase=phase.name,
                       links=rollout.ui_link())


class TriggerWatch:
    """Measures a phase's triggers on their cadence until stopped; ends the pause if one fails."""

    def __init__(self, rollout: Rollout, phase: Phase, resume_with: dict[str, Any]) -> None:
        self.rollout, self.phase = rollout, phase
        # A valid answer to the pause's form: the watcher resumes the run with it.
        self.resume_with = resume_with
        self.fired: Action | None = None
        self.rounds = 0
        self.stop = threading.Event()
        self._fired = threading.Event()

    def start(self) -> None:
        if self.phase.triggers:
            runctx.run_in_thread(self._run, name=f"trigger-watch-{self.phase.name}")

    def _run(self) -> None:
        rt = runctx.get()
        plan, phase = self.rollout.plan, self.phase
        watched = phase.model_copy(update={"success": []})
        scope = scope_for(plan, phase)
        prefix = phase.name + "/"
        baselines = {k[len(prefix):]: v for k, v in self.rollout.release.baselines.items() if k.startswith(prefix)}
        every = max(rt.clock.to_wall(phase.trigger_every.total_seconds()), rt.pacing.min_interval_wall, 0.05)
        history: dict[str, list[Measurement]] = defaultdict(list)
        log = get_run_logger()
        # The rounds watched here go on the phase's gates table after its soak's: the round
        # that ends a pause in a rollback is the one a person opens the table to see.
        table = evidence.PhaseGates.for_phase(self.rollout.release.id, phase.name,
                                              {g.name: g.bound for g in phase.gates()}, self.rollout.flow_run_id)
        started = rt.clock.now()
        # The first round is at once, not one cadence in: the soak's last round may have been
        # that long ago already, and a trigger crossing its bound just then must not wait out
        # the pause's setup (its notifications, its form) as well.
        while not self.stop.is_set():
            round_started = time.monotonic()
            try:
                measurements = measure_gates.fn(plan, watched, scope, baselines, rt.clock.now())
            except Exception as exc:  # a reader that fails once must not end the watch
                log.warning("trigger watch round failed: %s", exc)
                self.stop.wait(every)
                continue
            self.rounds += 1
            for m in measurements:
                history[m.gate].append(m)
            action = after_round(watched, history, soak_done=False)
            if any(m.outcome is not Outcome.SUCCESSFUL for m in measurements) or action.step is Step.ROLLBACK:
                # Passing rounds of a day-long pause would push the soak's rows out of the table.
                during = f"pause +{evidence.elapsed(rt.clock.now() - started)}"
                news = table.add(table.next_round, measurements, 0.0, during=during)
                table.publish(urgent=news, final=action.step is Step.ROLLBACK)
            self.rollout.record("watch_round", phase=phase.name, round=self.rounds, step=action.step.value,
                                outcomes={m.gate: m.outcome.value for m in measurements})
            if action.step is Step.ROLLBACK and action.strategy is not None and action.gates:
                self.fired = Action(Step.ROLLBACK, f"during the approval pause, {action.reason}", action.strategy,
                                    action.gates)
                self._fired.set()
                self._end_pause()
                return
            self.stop.wait(max(0.0, every - (time.monotonic() - round_started)))

    def _end_pause(self) -> None:
        """Resume the paused run so the rollback starts now, not when someone answers."""
        from prefect.client.orchestration import get_client
        from prefect.flow_runs import resume_flow_run

        run_id = self.rollout.flow_run_id
        if run_id is None:
            return
        answer = dict(self.resume_with)
        while not self.stop.is_set():
            try:
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_paused():
                    resume_flow_run(UUID(run_id), run_input=answer)
                    return
            except Exception as exc:  # the pause may have ended on its own; look again
                get_run_logger().debug("trigger watch could not resume %s yet: %s", run_id, exc)
            self.stop.wait(0.2)

    @property
    def has_fired(self) -> bool:
        return self._fired.is_set()


# What Prefect's FailExpiredPauses service sets on a run whose pause outlived its timeout.
PAUSE_EXPIRED_MESSAGE = "The flow was paused and never resumed."


def running_again(flow_run_id: str | None) -> None:
    """After a pause timed out, Prefect still shows the run Paused while it goes on (into a
    halt or a rollback), and refuses to pause it again: mark it Running, as it is.

    The server's own pause-expiry service may have seen the timeout first and failed the run
    (every few seconds it fails each run paused past its timeout): the run is as alive then,
    and a halted rollout's next pause would be refused ("already in terminal state FAILED"),
    ending the watch on a canary that still serves; that Failed state is taken back too."""
    if flow_run_id is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
            expired = state is not None and state.is_failed() and state.message == PAUSE_EXPIRED_MESSAGE
            if state is not None and (state.is_paused() or expired):
                client.set_flow_run_state(UUID(flow_run_id), Running(message="the pause timed out"), force=True)
    except Exception as exc:  # bookkeeping: the rollout goes on either way
        get_run_logger().warning("could not mark flow run %s running again: %s", flow_run_id, exc)


def await_approval(
    rollout: Rollout, phase: Phase, next_phase: Phase | None, action: Action, evidence_md: str
) -> ApprovalRecord:
    log = get_run_logger()
    rt = runctx.get()
    form = approval_form(phase)
    description = describe(rollout, phase, next_phase, action, evidence_md)
    floor = rt.pacing.min_approval_wall
    if action.step is Step.HOLD and rt.pacing.min_hold_wall is not None:
        floor = rt.pacing.min_hold_wall
    timeout_wall = max(rt.clock.to_wall(phase.approval.timeout.total_seconds()), floor, 1.0)
    started = time.time()
    deadline = started + timeout_wall
    record = ApprovalRecord(phase.name, Decision.TIMEOUT)
    # A run restarted during this pause pauses again in its own flow run. The first message
    # links to the dead run, whose pause stays open in Prefect: an approval given there
    # answers a run nobody executes, and this one would wait out its timeout into a halt.
    # So a run that finds the question asked by an earlier run asks again, once, with its
    # own link: the key names the flow run, and no run repeats its own message.
    key, where = f"{phase.name}:approval-needed", ""
    if key in rollout.release.notified:
        key, where = f"{key}:{rollout.flow_run_id}", " in the restarted run (answer here, not in the earlier one)"
    watching = watch_note(phase)
    # Watching starts before anything is said: the notifications and the pause take API calls,
    # seconds on a loaded API, and a trigger owes nothing to them.
    watch = TriggerWatch(rollout, phase, approval_form_fields.answer(
        REJECT, WATCHER, "a trigger fired during the pause", [False] * len(phase.manual_criteria)))
    watch.start()
    stop = threading.Event()
    try:
        rollout.notify(
            key, Kind.APPROVAL_NEEDED,
            f"{phase.name} is waiting for approval{where}: {action.reason}" + (f"\n{watching}" if watching else ""),
            phase=phase.name,
            fields={"next": next_phase.name if next_phase else "promotion", "timeout": f"{timeout_wall:.0f}s",
                    **({"criteria": "; ".join(phase.manual_criteria)} if phase.manual_criteria else {})},
            links=rollout.ui_link(), actions=slack_buttons(rollout, phase),
        )
        runctx.run_in_thread(_remind, rollout, phase, started, timeout_wall, stop, name="approval-reminders")
        while not watch.has_fired:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            if rollout.flow_run_id:
                rt.tell_pause(rollout.flow_run_id, phase.name, list(form.model_fields), action.step.value)
            try:
                answer = pause_flow_run(
                    wait_for_input=form.with_initial_data(description=description),
                    timeout=max(1, math.ceil(remaining)),
                    poll_interval=rt.pacing.approval_poll_seconds,
                )
            except FlowPauseTimeout:
                running_again(rollout.flow_run_id)
                break
            if watch.has_fired:
                break
            data = answer.model_dump(exclude={"metadata"})
            decision = approval_form_fields.chosen(data, APPROVE, REJECT)
            checked = approval_answer(
                phase, decision, str(data.get("approver", "")), str(data.get("comment", "")),
                [bool(data.get(criterion_field(i))) for i in range(len(phase.manual_criteria))],
            )
            if checked.decision is None:
                why = checked.refused
                log.warning("approval refused: %s", why)
                record.refused.append({"approver": checked.approver, "decision": decision,
                                       "why": why})
                rollout.record("approval_refused", phase=phase.name, approver=checked.approver, why=why)
                rollout.notify(
                    f"{phase.name}:refused-{len(record.refused)}", Kind.APPROVAL_REFUSED,
                    f"Approval by {checked.approver or '(blank)'} refused: {why}. Still waiting.", phase=phase.name,
                )
                description = f"**Refused:** {why}\n\n" + describe(rollout, phase, next_phase, action, evidence_md)
                continue
            record.decision = checked.decision
            record.approver, record.comment, record.criteria = checked.approver, checked.comment, checked.criteria
            # Self-hosted Prefect stores no identity with a resume; a sender, where the server
            # records one, is the only account behind the typed name.
            record.sender = answer.metadata.sender or ""
            break
    finally:
        stop.set()
        watch.stop.set()
    record.waited_wall = time.time() - started
    record.watch_rounds = watch.rounds
    if watch.fired is not None:
        record.fired = watch.fired
        rollout.notify(f"{phase.name}:fired-while-paused", Kind.PHASE_FAILED,
                       f"{phase.name}: {watch.fired.reason}; rolling back without waiting for approval",
                       severity=Severity.CRITICAL, phase=phase.name, links=rollout.ui_link())
    evidence.publish_markdown(rollout.release.id, f"{phase.name}-approval", approval_markdown(record),
                              f"{phase.name} approval: {record.decision.value}")
    rollout.record(
        "approval", phase=phase.name, decision=record.decision.value, approver=record.approver,
        comment=record.comment, criteria=record.criteria, refused=record.refused, sender=record.sender,
        fired=watch.fired.reason if watch.fired else None, watch_rounds=watch.rounds,
    )
    return record


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(none)"


def approval_markdown(record: ApprovalRecord) -> str:
    """The approval artifact: who decided what, why, what they attested, and which account sent it."""
    sender = record.sender or "none recorded (self-hosted Prefect stores no account with a resume)"
    lines = [
        f"# {record.phase}: {record.decision.value}", "",
        f"- **Decision:** {record.decision.value}",
        f"- **Decided by:** {_one_line(record.approver)}",
        f"- **Comment:** {_one_line(record.comment)}",
        f"- **Prefect account that sent it:** {_one_line(sender)}",
        f"- **Waited:** {format_duration(timedelta(seconds=round(record.waited_wall)))} (wall clock)",
    ]
    if record.fired is not None:
        lines.append(f"- **Trigger fired during the pause:** {record.fired.reason}")
    lines += ["", "## Criteria attested"]
    lines += [f"- {'✅' if on else '❌'} {text}" for text, on in record.criteria.items()] or ["- (none)"]
    if record.refused:
        lines += ["", "## Refused answers"]
        lines += [f"- {_one_line(r.get('approver', ''))} ({r.get('decision') or 'no decision'}): {r.get('why', '')}"
                  for r in record.refused]
    return "\n".join(lines) + "\n"


class HaltedAnswer(RunInput):
    """What a person does with a halted rollout whose canary still serves."""

    # Two switches, as the approval form's decision (phasegate/approval_form.py): exactly one on.
    model_config = ConfigDict(json_schema_extra=approval_form_fields.one_of(ROLLBACK, HAND_OVER))

    rollback: bool = Field(title="Roll back", description="Switch on to remove the new version now. "
                           "Switch on exactly one of Roll back and Hand over.")
    hand_over: bool = Field(title="Hand over", description="Switch on to stop watching: a person takes over.")
    by: str = Field(min_length=1, description="Who decides.")


def watch_while_halted(rollout: Rollout, phase: Phase, reason: str) -> Action | None:
    """A halted rollout with the new version still serving goes on being watched.

    The run pauses for a person (roll back, or hand over and stop watching) for up to the
    phase's approval timeout, with the triggers measured throughout; a trigger that fails
    rolls back without waiting. The rollback to do, or None to leave the cluster as it is.
    """
    if not phase.triggers or phase.environment is Environment.STAGING:
        return None
    log = get_run_logger()
    rt = runctx.get()
    floor = rt.pacing.min_approval_wall if rt.pacing.min_hold_wall is None else rt.pacing.min_hold_wall
    timeout_wall = max(rt.clock.to_wall(phase.approval.timeout.total_seconds()), floor, 1.0)
    watch = TriggerWatch(rollout, phase, approval_form_fields.halted_answer(ROLLBACK, WATCHER))
    watch.start()
    description = "\n".join([
        f"## {phase.name}: halted", reason, "",
        f"The new version still serves {phase.canary_share:g}% of production. {watch_note(phase)}",
        f"**rollback** removes it now ({phase.default_rollback.value}); **hand over** stops the watch and "
        "leaves the cluster to you.",
    ])
    answer: HaltedAnswer | None = None
    try:
        if rollout.flow_run_id:
            rt.tell_pause(rollout.flow_run_id, phase.name, list(HaltedAnswer.model_fields), "halted")
        answer = pause_flow_run(
            wait_for_input=HaltedAnswer.with_initial_data(description=description),
            timeout=max(1, math.ceil(timeout_wall)), poll_interval=rt.pacing.approval_poll_seconds,
        )
    except FlowPauseTimeout:
        running_again(rollout.flow_run_id)
        log.warning("%s: nobody answered the halted rollout; the watch ends, the cluster is left as it is", phase.name)
    finally:
        watch.stop.set()
    rollout.record("halted_watch", phase=phase.name, rounds=watch.rounds,
                   fired=watch.fired.reason if watch.fired else None,
                   decision=None if answer is None else approval_form_fields.chosen(
                       answer.model_dump(), ROLLBACK, HAND_OVER))
    if watch.fired is not None:
        return watch.fired
    if answer is not None and answer.rollback and not answer.hand_over:
        return Action(Step.ROLLBACK, f"rolled back by {answer.by} after the halt: {reason}", phase.default_rollback)
    return None
