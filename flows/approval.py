"""The approval pause between phases: a typed form in the Prefect UI.

The form is built from the plan at run time: ``decision`` (approve | reject) and
``approver`` have no default — a default would let an empty resume pass as a decision —
and each of the phase's manual criteria is a checkbox that must be ticked to approve. An
approver outside the allowlist, or an approval with unticked criteria, is recorded,
refused, and the run pauses again until the original deadline.

Reminders do not spam: one message when the pause starts, one at half the timeout, one at
expiry.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field, create_model

from flows.context import Rollout
from phasegate.decide import Action, Decision, approver_allowed
from phasegate.notify import Kind, reminder_times
from phasegate.plan import Phase
from tasks.runtime import current


@dataclass
class ApprovalRecord:
    phase: str
    decision: Decision
    approver: str = ""
    comment: str = ""
    criteria: dict[str, bool] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    waited_wall: float = 0.0


def criterion_field(index: int) -> str:
    return f"criterion_{index + 1}"


def approval_form(phase: Phase) -> type[RunInput]:
    camel = "".join(part.capitalize() for part in re.split(r"[-_]", phase.name))
    fields: dict[str, Any] = {
        "decision": (Literal["approve", "reject"], Field(description="Approve the next phase, or reject: roll back.")),
        "approver": (str, Field(min_length=1, description="Who decides (on the plan's approver list, if it has one).")),
        "comment": (str, Field("", description="Why; recorded in the evidence and posted to Slack.")),
    }
    for i, text in enumerate(phase.manual_criteria):
        fields[criterion_field(i)] = (bool, Field(False, title=text, description="Tick to attest: " + text))
    return create_model(f"Approve{camel}", __base__=RunInput, **fields)


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
        "",
        "### Criteria to attest (switch each on in the form to approve)",
        criteria,
        "",
        "### Gate evidence (last round)",
        evidence_md,
    ])


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


def await_approval(
    rollout: Rollout, phase: Phase, next_phase: Phase | None, action: Action, evidence_md: str
) -> ApprovalRecord:
    log = get_run_logger()
    rt = current()
    form = approval_form(phase)
    description = describe(rollout, phase, next_phase, action, evidence_md)
    timeout_wall = max(rt.clock.to_wall(phase.approval.timeout.total_seconds()), rt.min_approval_wall, 1.0)
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
    rollout.notify(
        key, Kind.APPROVAL_NEEDED,
        f"{phase.name} is waiting for approval{where}: {action.reason}", phase=phase.name,
        fields={"next": next_phase.name if next_phase else "promotion", "timeout": f"{timeout_wall:.0f}s"},
        links=rollout.ui_link(),
    )
    stop = threading.Event()
    reminders = threading.Thread(target=_remind, args=(rollout, phase, started, timeout_wall, stop), daemon=True)
    reminders.start()
    try:
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            if rt.on_pause is not None and rollout.flow_run_id:
                rt.on_pause(rollout.flow_run_id, phase.name, list(form.model_fields), action.step.value)
            try:
                answer = pause_flow_run(
                    wait_for_input=form.with_initial_data(description=description),
                    timeout=max(1, math.ceil(remaining)),
                    poll_interval=rt.approval_poll_seconds,
                )
            except FlowPauseTimeout:
                break
            data = answer.model_dump(exclude={"metadata"})
            criteria = {c: bool(data.get(criterion_field(i))) for i, c in enumerate(phase.manual_criteria)}
            approver, comment = str(data["approver"]).strip(), str(data.get("comment", ""))
            why = ""
            if not approver_allowed(phase, approver):
                why = f"{approver} is not on the approver list"
            elif data["decision"] == "approve" and not all(criteria.values()):
                why = "approval needs every criterion ticked: " + ", ".join(c for c, v in criteria.items() if not v)
            if why:
                log.warning("approval refused: %s", why)
                record.refused.append({"approver": approver, "decision": data["decision"], "why": why})
                rollout.record("approval_refused", phase=phase.name, approver=approver, why=why)
                rollout.notify(
                    f"{phase.name}:refused-{len(record.refused)}", Kind.APPROVAL_REFUSED,
                    f"Approval by {approver} refused: {why}. Still waiting.", phase=phase.name,
                )
                description = f"**Refused:** {why}\n\n" + describe(rollout, phase, next_phase, action, evidence_md)
                continue
            record.decision = Decision(data["decision"])
            record.approver, record.comment, record.criteria = approver, comment, criteria
            break
    finally:
        stop.set()
    record.waited_wall = time.time() - started
    rollout.record(
        "approval", phase=phase.name, decision=record.decision.value, approver=record.approver,
        comment=record.comment, criteria=record.criteria, refused=record.refused,
    )
    return record
