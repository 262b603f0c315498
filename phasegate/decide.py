"""What to do next, as pure functions of the plan and the evidence so far.

The flow asks; it never re-implements these rules:
- after each gate round: roll back at once if a trigger failed (fail fast; the most drastic
  strategy among those that fired wins), act on ``on_error`` if a gate ran out of tolerated
  errors, hold for a person early if a success criterion can no longer pass, else continue;
- at the end of the soak: advance only if every trigger and every success criterion is
  Successful; anything else holds for a person (Argo's inconclusive pause) — never an
  automatic advance on missing or marginal evidence;
- after an approval pause: approve advances, reject rolls back, timeout follows the plan.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from phasegate.analysis import Assessment, Measurement, Outcome, assess
from phasegate.plan import Phase, Strategy


class Step(enum.Enum):
    CONTINUE = "continue"  # keep soaking
    ADVANCE = "advance"  # the phase passed; approval (if required) then the next phase
    HOLD = "hold"  # a person must decide: approve anyway or reject
    ROLLBACK = "rollback"
    HALT = "halt"  # stop here, leave the cluster as it is, for a person to take over


@dataclass(frozen=True)
class Action:
    step: Step
    reason: str = ""
    strategy: Strategy | None = None
    gates: tuple[str, ...] = ()


def assess_phase(phase: Phase, history: Mapping[str, Sequence[Measurement]]) -> dict[str, Assessment]:
    return {gate.name: assess(gate, history.get(gate.name, ())) for gate in phase.gates()}


def after_round(phase: Phase, history: Mapping[str, Sequence[Measurement]], *, soak_done: bool) -> Action:
    verdicts = assess_phase(phase, history)

    fired = [t for t in phase.triggers if verdicts[t.name].outcome is Outcome.FAILED]
    if fired:
        strategy = max((t.rollback for t in fired), key=lambda s: s.rank)
        reasons = "; ".join(f"{t.name}: {verdicts[t.name].reason}" for t in fired)
        return Action(Step.ROLLBACK, f"trigger fired — {reasons}", strategy, tuple(t.name for t in fired))

    errored = [g for g in phase.gates() if verdicts[g.name].outcome is Outcome.ERROR]
    if errored:
        reasons = "; ".join(f"{g.name}: {verdicts[g.name].reason}" for g in errored)
        names = tuple(g.name for g in errored)
        if phase.on_error == "rollback":
            return Action(Step.ROLLBACK, f"metrics unavailable — {reasons}", phase.default_rollback, names)
        return Action(Step.HALT, f"metrics unavailable — {reasons}", None, names)

    lost = [g for g in phase.success if verdicts[g.name].outcome is Outcome.FAILED]
    if lost:
        reasons = "; ".join(f"{g.name}: {verdicts[g.name].reason}" for g in lost)
        return Action(Step.HOLD, f"success criteria can no longer pass — {reasons}", None, tuple(g.name for g in lost))

    if not soak_done:
        return Action(Step.CONTINUE)

    unmet = [g for g in phase.gates() if verdicts[g.name].outcome is not Outcome.SUCCESSFUL]
    if unmet:
        reasons = "; ".join(f"{g.name}: {verdicts[g.name].outcome.value} ({verdicts[g.name].reason})" for g in unmet)
        return Action(Step.HOLD, f"not every gate passed — {reasons}", None, tuple(g.name for g in unmet))
    return Action(Step.ADVANCE, "every trigger and success criterion held for the whole soak")


def after_deploy_failure(phase: Phase, reason: str) -> Action:
    return Action(Step.ROLLBACK, reason, phase.default_rollback)


def after_checks(phase: Phase, failures: Sequence[str]) -> Action:
    if failures:
        return Action(Step.ROLLBACK, "phase checks failed — " + "; ".join(failures), phase.default_rollback)
    return Action(Step.CONTINUE)


class Decision(enum.Enum):
    APPROVE = "approve"
    REJECT = "reject"
    TIMEOUT = "timeout"


def after_approval(phase: Phase, decision: Decision, *, who: str = "", comment: str = "") -> Action:
    by = f" by {who}" if who else ""
    note = f": {comment}" if comment else ""
    if decision is Decision.APPROVE:
        return Action(Step.ADVANCE, f"approved{by}{note}")
    if decision is Decision.REJECT:
        strategy = phase.approval.on_reject or phase.default_rollback
        return Action(Step.ROLLBACK, f"rejected{by}{note}", strategy)
    if phase.approval.on_timeout == "rollback":
        return Action(Step.ROLLBACK, "approval timed out", phase.default_rollback)
    return Action(Step.HALT, "approval timed out: halted for a person to take over")


def approver_allowed(phase: Phase, approver: str) -> bool:
    allowed = phase.approval.approvers
    return not allowed or approver.strip().lower() in {a.strip().lower() for a in allowed}
