"""What to do next, as pure functions of the plan and the evidence so far.

The flow asks; it never re-implements these rules:
- after each gate round: roll back at once if a trigger failed (fail fast; the most drastic
  strategy among those that fired wins) or a success criterion judged with ``critical: true``
  failed (Kayenta fails the whole run on a critical metric; here with the phase's
  rollback), act on ``on_error`` if a gate ran out of tolerated errors, hold for a person
  early if a success criterion can no longer pass or any gate has had more rounds without
  data than its limit (a count, or a share of the soak's rounds), else continue;
- at the end of the soak: advance only if every trigger and every success criterion is
  Successful; anything else holds for a person (Argo's inconclusive pause) — never an
  automatic advance on missing or marginal evidence;
- after an approval pause: approve advances, reject rolls back, timeout follows the plan;
  an answer that breaks the plan's rules (a blank or unlisted approver, an unattested
  criterion) is refused with the reason, and the pause goes on;
- where a rerun picks up a rollout (``resume_point``), from the record on the cluster;
- whether a rollback left the cluster as it should (``rollback_problems``);
- what keeps a rollout from starting (``preflight_problems``);
- when a round finds the cluster changed under the rollout (``drift.find_drift``): halt for
  a person by default — the writer may be a GitOps controller that will do it again, or a
  person mid-incident whose change a rollback would undo — or roll back if the plan says.

Every rule is a function of values, table-tested in milliseconds; flows ask, never decide.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from phasegate.analysis import Assessment, Measurement, Outcome, assess
from phasegate.drift import Drift
from phasegate.durations import format_duration
from phasegate.plan import Phase, RolloutPlan, Strategy
from phasegate.ports import TargetState
from phasegate.record import PhaseState, Release


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
    return {gate.name: assess(gate, history.get(gate.name, ()), rounds=phase.rounds) for gate in phase.gates()}


def after_round(phase: Phase, history: Mapping[str, Sequence[Measurement]], *, soak_done: bool) -> Action:
    verdicts = assess_phase(phase, history)

    fired = [t for t in phase.triggers if verdicts[t.name].outcome is Outcome.FAILED]
    if fired:
        strategy = max((t.rollback for t in fired), key=lambda s: s.rank)
        reasons = "; ".join(f"{t.name}: {verdicts[t.name].reason}" for t in fired)
        return Action(Step.ROLLBACK, f"trigger fired — {reasons}", strategy, tuple(t.name for t in fired))

    critical = [g for g in phase.success if g.judge is not None and g.judge.critical
                and verdicts[g.name].outcome is Outcome.FAILED]
    if critical:
        reasons = "; ".join(f"{g.name}: {verdicts[g.name].reason}" for g in critical)
        return Action(Step.ROLLBACK, f"critical judge failed — {reasons}", phase.default_rollback,
                      tuple(g.name for g in critical))

    errored = [g for g in phase.gates() if verdicts[g.name].outcome is Outcome.ERROR]
    if errored:
        reasons = "; ".join(f"{g.name}: {verdicts[g.name].reason}" for g in errored)
        names = tuple(g.name for g in errored)
        if phase.error_action == "rollback":
            return Action(Step.ROLLBACK, f"metrics unavailable — {reasons}", phase.default_rollback, names)
        return Action(Step.HALT, f"metrics unavailable — {reasons}", None, names)

    lost = [g for g in phase.success if verdicts[g.name].outcome is Outcome.FAILED]
    # Past its inconclusive limit a gate can never pass: hold now (Argo pauses on
    # Inconclusive at once), not after the rest of a 48 h soak. Triggers are gates too.
    lost += [g for g in phase.gates() if verdicts[g.name].exhausted]
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


def after_drift(phase: Phase, drifts: Sequence[Drift]) -> Action:
    """CONTINUE when nothing changed; else what ``phase.on_drift`` says, naming every change."""
    if not drifts:
        return Action(Step.CONTINUE)
    reason = "the cluster changed under the rollout — " + "; ".join(str(d) for d in drifts)
    if phase.on_drift == "rollback":
        return Action(Step.ROLLBACK, reason, phase.default_rollback)
    return Action(Step.HALT, reason)


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


def normalise_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def approver_allowed(phase: Phase, approver: str) -> bool:
    """A name, after trimming and case-folding, that is on the list (any name if there is none)."""
    who = normalise_name(approver)
    if not who:
        return False
    allowed = {normalise_name(a) for a in phase.approval.approvers}
    return not allowed or who in allowed


@dataclass(frozen=True)
class Answer:
    """What a person answered in an approval form: a decision, or why it was refused."""

    decision: Decision | None
    approver: str
    comment: str
    criteria: dict[str, bool]
    refused: str = ""


def approval_answer(phase: Phase, decision: str, approver: str, comment: str, ticked: Sequence[bool]) -> Answer:
    """Check a form answer against the plan: who may decide, and what approving needs."""
    criteria = {c: bool(t) for c, t in zip(phase.manual_criteria, ticked, strict=False)}
    criteria.update({c: False for c in phase.manual_criteria[len(criteria):]})
    who = " ".join(approver.split())

    def refuse(why: str) -> Answer:
        return Answer(None, who, comment.strip(), criteria, refused=why)

    if decision not in (Decision.APPROVE.value, Decision.REJECT.value):
        return refuse(f"no decision given ({decision!r})")
    if not who:
        return refuse("the approver's name is blank")
    if not approver_allowed(phase, who):
        return refuse(f"{who} is not on the approver list")
    if decision == Decision.APPROVE.value and not all(criteria.values()):
        return refuse("approval needs every criterion ticked: " + ", ".join(c for c, v in criteria.items() if not v))
    return Answer(Decision(decision), who, comment.strip(), criteria)


class Start(enum.Enum):
    NEW = "new"  # nothing of this rollout on the cluster: start at the first phase
    RESUME = "resume"  # this rollout's unfinished record: pick up where it stopped
    ROLLBACK = "rollback"  # a rollback had started: finish it, whatever else the record says
    DONE = "done"  # this rollout already finished (promoted): nothing to do
    REFUSE = "refuse"  # another rollout is unfinished, or there is nothing to roll out


@dataclass(frozen=True)
class ResumePoint:
    start: Start
    reason: str = ""
    phase_index: int = 0
    # At the resumed phase: re-enter its soak (True) or act on its recorded verdict.
    verdict: Step | None = None
    skip_phase: bool = False


def resume_point(plan: RolloutPlan, rid: str, image: str, record: Release | None, state: TargetState) -> ResumePoint:
    """Where a run of rollout ``rid`` starts, given the record on the Deployment."""
    if record is not None and not record.finished and record.id != rid:
        return ResumePoint(Start.REFUSE, f"the target is in the middle of rollout {record.id!r} "
                                         f"({record.phase}, {record.state.value if record.state else '?'})")
    if record is not None and record.id == rid:
        if record.state is PhaseState.PROMOTED:
            return ResumePoint(Start.DONE, "already promoted")
        if record.state is PhaseState.ROLLING_BACK and record.rollback is not None:
            return ResumePoint(Start.ROLLBACK, f"a {record.rollback.strategy} rollback in {record.rollback.phase} "
                                               "was under way when the last run stopped")
        if not record.finished:
            names = [p.name for p in plan.phases]
            index = names.index(record.phase) if record.phase in names else 0
            if record.state is PhaseState.APPROVED:
                return ResumePoint(Start.RESUME, f"{record.phase} was approved", index, skip_phase=True)
            if record.state in (PhaseState.PASSED, PhaseState.HELD):
                verdict = Step.ADVANCE if record.state is PhaseState.PASSED else Step.HOLD
                return ResumePoint(Start.RESUME, f"{record.phase} had ended: {record.state.value}", index, verdict)
            return ResumePoint(Start.RESUME, f"{record.phase} was {record.state.value if record.state else 'started'}",
                               index)
    if state.stable.image == image and state.canary is None:
        return ResumePoint(Start.REFUSE, f"the target already runs {image}; nothing to roll out")
    return ResumePoint(Start.NEW)


@dataclass(frozen=True)
class Expected:
    """What the cluster must show after a rollback of one strategy."""

    new_image: str
    # The replicas stable must have again; None when an autoscaler owns the count.
    stable_replicas: int | None = None
    flag_env: str | None = None
    flag_off: str | None = None


def rollback_problems(strategy: Strategy, state: TargetState, expected: Expected,
                      configmap_value: str | None = None, configmap_key: str | None = None) -> list[str]:
    """Why the cluster does not yet show what ``strategy`` promises (empty: it does)."""
    problems: list[str] = []
    if strategy is Strategy.FEATURE_FLAG:
        if configmap_key is not None and configmap_value != expected.flag_off:
            problems.append(f"ConfigMap key {configmap_key} reads {configmap_value!r}, not {expected.flag_off!r}")
        if expected.flag_env is not None:
            for workload in (state.stable, state.canary):
                if workload is not None and workload.env.get(expected.flag_env) != expected.flag_off:
                    problems.append(f"{workload.name}: {expected.flag_env}={workload.env.get(expected.flag_env)!r}")
        return problems
    if state.canary is not None:
        problems.append(f"{state.canary.name} still exists")
    if state.stable.image == expected.new_image:
        problems.append(f"{state.stable.name} still runs the new image {expected.new_image}")
    if state.autoscaler is not None and not state.autoscaler.restored:
        problems.append(f"HPA {state.autoscaler.name} is not restored to its own bounds")
    if expected.stable_replicas is not None and state.stable.replicas != expected.stable_replicas:
        problems.append(
            f"{state.stable.name} has {state.stable.replicas} replicas, expected {expected.stable_replicas}"
        )
    if not state.stable.rolled_out:
        problems.append(f"{state.stable.name} is not rolled out: {state.stable.ready_replicas}/"
                        f"{state.stable.replicas} ready")
    return problems


def escalation(phase: Phase, tried: Strategy) -> Strategy | None:
    """The more drastic strategy to use when ``tried`` did not cure the fired metrics.

    Only a feature flag escalates: switching a code path off may not be the cure, and then
    the new version itself must go (the canary if one runs, else the undo). After removing
    the canary or undoing, only the old version serves: metrics that stay bad then are not
    the new version's, and nothing more drastic is left that would help.
    """
    if tried is not Strategy.FEATURE_FLAG:
        return None
    return Strategy.CANARY_ONLY if phase.has_canary else Strategy.FULL_UNDO


def preflight_problems(
    *,
    targets: Mapping[str, TargetState | str],
    denied: Mapping[str, Sequence[str]],
    checklist_required: bool,
    checklist_confirmed: bool,
    metric_problems: Sequence[str],
    slack_problem: str | None,
    image: str,
    check_problems: Sequence[str] = (),
) -> list[str]:
    """Everything that keeps a rollout from starting, all at once; empty: start.

    ``targets`` maps each target to its state or to why it could not be read; ``denied``
    each namespace to the RBAC verbs it refuses; ``slack_problem`` is a refused token
    (an outage is not a problem: notifications never stop a rollout); ``check_problems``
    the smoke and load checks that could reach their Service by no route
    (``checkroute.check_problems``): a staging deploy whose checks are bound to fail only
    costs a rollback.
    """
    problems: list[str] = []
    for name, state in targets.items():
        if isinstance(state, str):
            problems.append(f"{name}: {state}")
        elif state.stable.replicas < 1 and state.canary is None:
            problems.append(f"{name}: the Deployment has no replicas to shift")
    for namespace, verbs in denied.items():
        problems.extend(f"{namespace}: RBAC denies {verb}" for verb in verbs)
    if checklist_required and not checklist_confirmed:
        problems.append("the pre-deployment checklist is not confirmed for this release: run "
                        "`phasegate checklist PLAN --image IMAGE` (the pre-deployment-checklist deployment) first")
    problems.extend(metric_problems)
    problems.extend(check_problems)
    if slack_problem:
        problems.append(f"Slack: {slack_problem}")
    last = image.rsplit("/", 1)[-1]
    if not image or (":" not in last and "@" not in image):
        problems.append(f"image {image!r} has no tag or digest: a rollout needs an exact version")
    return problems


@dataclass(frozen=True)
class RunbookStart:
    """Whether a rollback a person (or an alert) starts may act now, and where."""

    ok: bool
    reason: str
    phase: str = ""
    # The record's driver is dead (its run ended without finishing the record): free its lock.
    take_over: bool = False


def runbook_start(plan: RolloutPlan, strategy: Strategy, record: Release | None, state: TargetState,
                  driver_live: bool) -> RunbookStart:
    """May a rollback procedure run against the release on the target now?

    ``driver_live``: the flow run the record names is still running or paused (a rollout
    waiting for an approval still watches its triggers and would act itself). A finished
    record (promoted, halted, rolled back) has no driver. A live one is never raced; an
    unfinished record whose run is gone (crashed, cancelled) is taken over, as a rerun
    of that rollout would.
    """
    if record is None:
        return RunbookStart(False, "no phasegate release is recorded on the target: nothing to roll back")
    names = [p.name for p in plan.phases]
    phase = record.phase if record.phase in names else names[-1]
    if not record.finished and driver_live:
        return RunbookStart(False, f"rollout {record.id!r} is live in {record.phase} "
                                   f"({record.state.value if record.state else '?'}, flow run {record.flow_run}): "
                                   "answer its approval form (reject rolls back) or cancel that run first", phase)
    if strategy is Strategy.FEATURE_FLAG and plan.feature_flag is None:
        return RunbookStart(False, "the plan has no feature_flag block: there is no flag to switch off", phase)
    if strategy is Strategy.CANARY_ONLY and state.canary is None:
        return RunbookStart(False, f"no canary runs beside {state.stable.name}: nothing for canary_only to remove "
                                   "(full_undo rolls the whole Deployment back)", phase)
    if strategy is Strategy.FULL_UNDO and state.canary is None and state.stable.image != record.image:
        return RunbookStart(False, f"{state.stable.name} runs {state.stable.image}, not {record.image}: "
                                   "already rolled back, nothing to undo", phase)
    take_over = not record.finished
    state_name = record.state.value if record.state else "?"
    why = "taking over from a run that is gone" if take_over else f"release {state_name}"
    return RunbookStart(True, why, phase, take_over)


class AlertStep(enum.Enum):
    ROLL_BACK = "roll back"  # at once, no person
    ASK = "ask"  # pause for a person with the evidence and the procedures
    IGNORE = "ignore"  # nothing of ours to act on


@dataclass(frozen=True)
class AlertAction:
    step: AlertStep
    reason: str
    strategy: Strategy | None = None
    phase: str = ""


def after_alert(plan: RolloutPlan, record: Release | None, severity: str, trigger: str | None,
                fired_wall: float) -> AlertAction:
    """What a firing alert does to the release on the target (the plan's ``alert_response``).

    A severity the plan rolls back on acts without a person while a canary runs and during
    the first day at 100 %; later, or for a milder severity, a person decides. The strategy
    is the named trigger's in the current phase, else that phase's default rollback.

    The release's age is taken when the alert *fired* (``fired_wall``: Alertmanager's
    ``startsAt``), not when a flow got to it: a worker's backlog must not turn a first-day
    alert into a question. Prometheus stamps alerts in wall time in every world, and the
    flow that acts may run in another process on another clock than the rollout that
    promoted (a worker on a real clock, after a rehearsal on a compressed one), so the age
    is wall time against the promotion's wall instant — never one process's plan time
    against another's. A record without it (written before it existed) falls back to
    ``promoted_at``, which is wall time in production; one with no promotion time at all
    gives no age, and a person decides.
    """
    if record is None:
        return AlertAction(AlertStep.IGNORE, "no phasegate release is recorded on the target")
    if record.state in (PhaseState.ROLLED_BACK, PhaseState.ROLLING_BACK):
        return AlertAction(AlertStep.IGNORE, f"release {record.id} is already {record.state.value}")
    names = [p.name for p in plan.phases]
    phase = plan.phase(record.phase if record.phase in names else names[-1])
    strategy = next((t.rollback for t in phase.triggers if t.name == trigger), phase.default_rollback)
    response = plan.alert_response
    if record.state is PhaseState.PROMOTED:
        promoted = record.promoted_wall if record.promoted_wall is not None else record.promoted_at
        if promoted is None:
            in_window, when = False, "after a promotion whose time is not recorded"
        else:
            age = fired_wall - promoted
            # Fired before the promotion: while the new version already served at 100 %.
            in_window = age <= response.first_day.total_seconds()
            ago = format_duration(timedelta(seconds=round(abs(age))))
            when = f"{ago} after promotion" if age >= 0 else f"{ago} before promotion"
    else:
        in_window = phase.has_canary
        when = f"during {phase.name}"
    if severity in response.rollback_at_once and in_window:
        return AlertAction(AlertStep.ROLL_BACK, f"{severity} alert {when}: rolling back at once", strategy, phase.name)
    return AlertAction(AlertStep.ASK, f"{severity} alert {when}: a person decides", strategy, phase.name)
