"""When a person's or an alert's rollback may act, and what a firing alert does — table tests."""

from __future__ import annotations

import pytest

from phasegate.decide import AlertStep, after_alert, runbook_start
from phasegate.plan import Strategy
from phasegate.record import ANN_PROMOTED_WALL, PhaseState, Release
from tests.core.test_decide_rules import NEW, PLAN, record, target, workload

CANARY = workload("bodhi-server-canary", NEW, 1)
PROMOTED_TARGET = target(workload(image=NEW))
DAY = 86400.0


@pytest.mark.parametrize(
    ("rec", "state", "live", "strategy", "ok", "take_over", "says"),
    [
        (None, PROMOTED_TARGET, False, Strategy.FULL_UNDO, False, False, "nothing to roll back"),
        (record(PhaseState.PROMOTED, "full"), PROMOTED_TARGET, False, Strategy.FULL_UNDO, True, False, "promoted"),
        (record(PhaseState.PROMOTED, "full"), PROMOTED_TARGET, False, Strategy.FEATURE_FLAG, True, False, ""),
        (record(PhaseState.PROMOTED, "full"), PROMOTED_TARGET, False, Strategy.CANARY_ONLY, False, False,
         "no canary runs"),
        (record(PhaseState.HELD), target(canary=CANARY), True, Strategy.CANARY_ONLY, False, False, "is live"),
        (record(PhaseState.SOAKING), target(canary=CANARY), True, Strategy.FULL_UNDO, False, False, "is live"),
        (record(PhaseState.HALTED), target(canary=CANARY), False, Strategy.CANARY_ONLY, True, False, "halted"),
        (record(PhaseState.SOAKING), target(canary=CANARY), False, Strategy.CANARY_ONLY, True, True, "gone"),
        (record(PhaseState.ROLLED_BACK, "full"), target(), False, Strategy.FULL_UNDO, False, False,
         "already rolled back"),
    ],
)
def test_runbook_start(rec, state, live, strategy, ok, take_over, says):
    start = runbook_start(PLAN, strategy, rec, state, live)
    assert (start.ok, start.take_over) == (ok, take_over)
    assert says in start.reason


# The promotion's wall instant, and a rehearsal's plan time for it: a compressed clock
# 2 days per second records ``promoted_at`` weeks ahead of any wall clock.
WALL = 1_800_000_000.0
REHEARSAL_PLAN_TIME = WALL + 40 * DAY


def promoted(**kw):
    return record(PhaseState.PROMOTED, "full", **kw)


@pytest.mark.parametrize(
    ("rec", "severity", "trigger", "fired", "step", "strategy", "says"),
    [
        (promoted(promoted_at=WALL, promoted_wall=WALL), "critical", None, WALL + 3600, AlertStep.ROLL_BACK,
         Strategy.FULL_UNDO, "1h after promotion"),
        (promoted(promoted_at=WALL, promoted_wall=WALL), "critical", "lock-timeout-rate", WALL + 3600,
         AlertStep.ROLL_BACK, Strategy.FEATURE_FLAG, ""),
        (promoted(promoted_at=WALL, promoted_wall=WALL), "critical", None, WALL + 3 * DAY, AlertStep.ASK,
         Strategy.FULL_UNDO, "3d after promotion"),
        (promoted(promoted_at=WALL, promoted_wall=WALL), "warning", None, WALL + 3600, AlertStep.ASK,
         Strategy.FULL_UNDO, "a person decides"),
        # Promoted by a rehearsal on a compressed clock, acted on by a worker on a real one:
        # the age is wall against wall, not the worker's now against the rehearsal's plan time.
        (promoted(promoted_at=REHEARSAL_PLAN_TIME, promoted_wall=WALL), "critical", None, WALL + 20,
         AlertStep.ROLL_BACK, Strategy.FULL_UNDO, "20s after promotion"),
        (promoted(promoted_at=REHEARSAL_PLAN_TIME, promoted_wall=WALL), "critical", None, WALL + 2 * DAY,
         AlertStep.ASK, Strategy.FULL_UNDO, "2d after promotion"),
        # A record written before the wall instant existed: promoted_at (wall time in production).
        (promoted(promoted_at=WALL), "critical", None, WALL + 3600, AlertStep.ROLL_BACK, Strategy.FULL_UNDO, ""),
        (promoted(promoted_at=WALL), "critical", None, WALL + 2 * DAY, AlertStep.ASK, Strategy.FULL_UNDO, ""),
        # No promotion time at all: no age to act on without a person.
        (promoted(), "critical", None, WALL, AlertStep.ASK, Strategy.FULL_UNDO, "not recorded"),
        # Fired while the new version already served everything, just before the record said promoted.
        (promoted(promoted_at=WALL, promoted_wall=WALL), "critical", None, WALL - 30, AlertStep.ROLL_BACK,
         Strategy.FULL_UNDO, "30s before promotion"),
        (record(PhaseState.SOAKING, "canary-10pct"), "critical", "token-not-active", WALL, AlertStep.ROLL_BACK,
         Strategy.CANARY_ONLY, "during canary-10pct"),
        (record(PhaseState.ROLLED_BACK, "full"), "critical", None, WALL, AlertStep.IGNORE, None, "already"),
        (None, "critical", None, WALL, AlertStep.IGNORE, None, "no phasegate release"),
    ],
)
def test_after_alert(rec, severity, trigger, fired, step, strategy, says):
    action = after_alert(PLAN, rec, severity, trigger, fired_wall=fired)
    assert action.step is step, action.reason
    assert action.strategy is strategy
    assert says in action.reason


def test_the_promotions_wall_instant_survives_the_record_round_trip():
    rec = promoted(promoted_at=REHEARSAL_PLAN_TIME, promoted_wall=WALL)
    back = Release.from_annotations({k: v for k, v in rec.annotations().items() if v is not None})
    assert back is not None and (back.promoted_at, back.promoted_wall) == (REHEARSAL_PLAN_TIME, WALL)
    rec.promoted_at = rec.promoted_wall = None  # a rollback: no more reviews, no more first day
    assert rec.annotations()[ANN_PROMOTED_WALL] is None


def test_budgets_default_to_the_seeds_procedures():
    budgets = PLAN.rollback_budgets
    assert [budgets.of(s).total_seconds() for s in (Strategy.FULL_UNDO, Strategy.CANARY_ONLY, Strategy.FEATURE_FLAG)] \
        == [300, 900, 60]
