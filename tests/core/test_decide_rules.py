"""The rules flows ask about: where a rerun resumes, what an approval answer means, whether a
rollback left the cluster as promised, what stops a rollout — table tests, milliseconds each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phasegate.decide import (
    Decision,
    Expected,
    Start,
    Step,
    approval_answer,
    approver_allowed,
    escalation,
    preflight_problems,
    resume_point,
    rollback_problems,
)
from phasegate.plan import Approval, Strategy
from phasegate.ports import TargetState, WorkloadState
from phasegate.record import PhaseState, Release, RollbackRecord
from tests.core.builders import phase, seed_plan

PLAN = seed_plan()
NEW, OLD = "registry/bodhi-server:1.6.0", "registry/bodhi-server:1.5.0"
RID = f"{PLAN.name}:{NEW}"


def workload(name="bodhi-server", image=OLD, replicas=10, ready=None, env=None) -> WorkloadState:
    ready = replicas if ready is None else ready
    return WorkloadState(name, image, replicas, ready, replicas, ready, 3, 2, 2, env=env or {})


def target(stable=None, canary=None) -> TargetState:
    return TargetState(stable or workload(), canary)


def record(state: PhaseState | None, phase_name: str | None = "canary-10pct", rid: str = RID, **kw) -> Release:
    return Release(rid, NEW, OLD, 10, phase=phase_name, state=state, **kw)


# --- resume point ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("rec", "start", "index", "verdict", "skip"),
    [
        (None, Start.NEW, 0, None, False),
        (record(PhaseState.PROMOTED), Start.DONE, 0, None, False),
        (record(PhaseState.ROLLED_BACK), Start.NEW, 0, None, False),  # a finished try; a new run starts over
        (record(PhaseState.SOAKING), Start.RESUME, 1, None, False),
        (record(PhaseState.DEPLOYING, "full"), Start.RESUME, 3, None, False),
        (record(PhaseState.PASSED), Start.RESUME, 1, Step.ADVANCE, False),
        (record(PhaseState.HELD), Start.RESUME, 1, Step.HOLD, False),
        (record(PhaseState.APPROVED, "staging"), Start.RESUME, 0, None, True),
        (record(PhaseState.ROLLING_BACK, rollback=RollbackRecord("canary-10pct", "canary_only", "token")),
         Start.ROLLBACK, 0, None, False),
        (record(PhaseState.SOAKING, rid="other-plan:x:2"), Start.REFUSE, 0, None, False),
    ],
)
def test_resume_point_from_the_record(rec, start, index, verdict, skip):
    point = resume_point(PLAN, RID, NEW, rec, target(canary=workload("bodhi-server-canary", NEW, 1)))
    assert (point.start, point.phase_index, point.verdict, point.skip_phase) == (start, index, verdict, skip)


def test_a_rerun_killed_during_rollback_verification_finishes_the_rollback_not_the_soak():
    rec = record(PhaseState.ROLLING_BACK, rollback=RollbackRecord("canary-50pct", "canary_only", "p99", ("p99",)))
    point = resume_point(PLAN, RID, NEW, rec, target())
    assert point.start is Start.ROLLBACK and "canary_only" in point.reason


def test_a_target_already_on_the_image_has_nothing_to_roll_out():
    assert resume_point(PLAN, RID, NEW, None, target(stable=workload(image=NEW))).start is Start.REFUSE


def test_another_rollouts_unfinished_record_refuses_naming_it():
    point = resume_point(PLAN, RID, NEW, record(PhaseState.HELD, rid="other:img:9"), target())
    assert point.start is Start.REFUSE and "other:img:9" in point.reason


# --- approval answers -----------------------------------------------------------------------

GUARDED = phase(manual_criteria=["audit logs show one refresh", "no tickets"],
                approval=Approval(approvers=["Alice Smith", "bob"]))


@pytest.mark.parametrize(
    ("decision", "who", "ticked", "expected", "refusal"),
    [
        ("approve", "alice smith", [True, True], Decision.APPROVE, ""),
        ("approve", "  Alice   Smith ", [True, True], Decision.APPROVE, ""),
        ("reject", "BOB", [False, False], Decision.REJECT, ""),
        ("approve", "bob", [True, False], None, "every criterion ticked: no tickets"),
        ("approve", "   ", [True, True], None, "blank"),
        ("approve", "", [True, True], None, "blank"),
        ("approve", "mallory", [True, True], None, "not on the approver list"),
        ("", "bob", [True, True], None, "no decision"),
    ],
)
def test_an_approval_answer_is_checked_against_the_plan(decision, who, ticked, expected, refusal):
    answer = approval_answer(GUARDED, decision, who, " ok ", ticked)
    assert answer.decision is expected
    assert refusal in answer.refused if refusal else answer.refused == ""


def test_a_blank_name_is_refused_even_where_anyone_may_approve():
    open_phase = phase()
    assert approver_allowed(open_phase, "carol")
    assert not approver_allowed(open_phase, " \t ")


# --- rollback verification ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("strategy", "state", "expected", "problem"),
    [
        (Strategy.CANARY_ONLY, target(), Expected(NEW, stable_replicas=10), None),
        (Strategy.CANARY_ONLY, target(canary=workload("bodhi-server-canary", NEW, 1)), Expected(NEW, 10),
         "bodhi-server-canary still exists"),
        (Strategy.CANARY_ONLY, target(stable=workload(replicas=9)), Expected(NEW, stable_replicas=10),
         "has 9 replicas, expected 10"),
        (Strategy.CANARY_ONLY, target(stable=workload(replicas=13)), Expected(NEW, stable_replicas=None), None),
        (Strategy.FULL_UNDO, target(stable=workload(image=NEW)), Expected(NEW), "still runs the new image"),
        (Strategy.FULL_UNDO, target(stable=workload(ready=4)), Expected(NEW), "4/10 ready"),
        (Strategy.FEATURE_FLAG, target(stable=workload(env={"FLAG": "true"})),
         Expected(NEW, flag_env="FLAG", flag_off="false"), "FLAG='true'"),
        (Strategy.FEATURE_FLAG, target(stable=workload(env={"FLAG": "false"})),
         Expected(NEW, flag_env="FLAG", flag_off="false"), None),
    ],
)
def test_rollback_problems(strategy, state, expected, problem):
    problems = rollback_problems(strategy, state, expected)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_a_configmap_flag_that_still_reads_on_is_a_problem():
    problems = rollback_problems(Strategy.FEATURE_FLAG, target(), Expected(NEW, flag_off="false"),
                                 configmap_value="true", configmap_key="bodhi-config/enable")
    assert problems == ["ConfigMap key bodhi-config/enable reads 'true', not 'false'"]


@pytest.mark.parametrize(
    ("phase_name", "tried", "next_"),
    [
        ("canary-10pct", Strategy.FEATURE_FLAG, Strategy.CANARY_ONLY),
        ("full", Strategy.FEATURE_FLAG, Strategy.FULL_UNDO),
        ("canary-10pct", Strategy.CANARY_ONLY, None),
        ("full", Strategy.FULL_UNDO, None),
    ],
)
def test_only_a_feature_flag_that_did_not_cure_escalates(phase_name, tried, next_):
    assert escalation(PLAN.phase(phase_name), tried) is next_


# --- preflight ------------------------------------------------------------------------------

def preflight(**kw):
    args = dict(targets={"bodhi/bodhi-server": target()}, denied={"bodhi": []}, checklist_required=True,
                checklist_confirmed=True, metric_problems=[], slack_problem=None, image=NEW)
    args.update(kw)
    return preflight_problems(**args)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"targets": {"bodhi/bodhi-server": "Deployment not found"}}, "bodhi/bodhi-server: Deployment not found"),
        ({"targets": {"x/y": target(stable=workload(replicas=0))}}, "no replicas to shift"),
        ({"denied": {"bodhi": ["patch deployments"]}}, "bodhi: RBAC denies patch deployments"),
        ({"checklist_confirmed": False}, "phasegate checklist"),
        ({"checklist_required": False, "checklist_confirmed": False}, None),
        ({"metric_problems": ["phases[canary].p99: no data"]}, "no data"),
        ({"slack_problem": "invalid_auth"}, "Slack: invalid_auth"),
        ({"image": "registry/bodhi-server"}, "has no tag or digest"),
        ({"image": "registry:5000/bodhi-server"}, "has no tag or digest"),
        ({"image": "registry/bodhi-server@sha256:abc"}, None),
    ],
)
def test_preflight_problems(change, problem):
    problems = preflight(**change)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


def test_preflight_reports_every_problem_at_once():
    problems = preflight(checklist_confirmed=False, slack_problem="token_revoked", image="x")
    assert len(problems) == 3


# --- defaults that fit the kind of phase ----------------------------------------------------

def test_metrics_outage_halts_when_the_new_version_is_all_of_production_and_rolls_back_a_canary():
    assert PLAN.phase("full").error_action == "halt"
    assert PLAN.phase("canary-10pct").error_action == "rollback"
    assert replace_on_error(PLAN.phase("full"), "rollback").error_action == "rollback"


def replace_on_error(p, value):
    return p.model_copy(update={"on_error": value})


def test_triggers_are_measured_every_minute_while_criteria_keep_the_phase_interval():
    canary = PLAN.phase("canary-10pct")
    assert canary.interval.total_seconds() == 300 and canary.trigger_every.total_seconds() == 60
    fast = phase(interval="30s")
    assert fast.trigger_every.total_seconds() == 30


def test_a_record_round_trips_through_annotations():
    rec = record(PhaseState.ROLLING_BACK, rollback=RollbackRecord("full", "feature_flag", "lock", ("lock",), 5.0),
                 baselines={"full/p99": 12.5}, notified=["a", "b"])
    back = Release.from_annotations({k: v for k, v in rec.annotations().items() if v is not None})
    assert back == replace(rec)
