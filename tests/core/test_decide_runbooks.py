"""When a person's or an alert's rollback may act, and what a firing alert does — table tests."""

from __future__ import annotations

import pytest

from phasegate.decide import AlertStep, after_alert, runbook_start
from phasegate.plan import Strategy
from phasegate.record import PhaseState
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


@pytest.mark.parametrize(
    ("rec", "severity", "trigger", "age", "step", "strategy"),
    [
        (record(PhaseState.PROMOTED, "full", promoted_at=0.0), "critical", None, 3600, AlertStep.ROLL_BACK,
         Strategy.FULL_UNDO),
        (record(PhaseState.PROMOTED, "full", promoted_at=0.0), "critical", "lock-timeout-rate", 3600,
         AlertStep.ROLL_BACK, Strategy.FEATURE_FLAG),
        (record(PhaseState.PROMOTED, "full", promoted_at=0.0), "critical", None, 3 * DAY, AlertStep.ASK,
         Strategy.FULL_UNDO),
        (record(PhaseState.PROMOTED, "full", promoted_at=0.0), "warning", None, 3600, AlertStep.ASK,
         Strategy.FULL_UNDO),
        (record(PhaseState.SOAKING, "canary-10pct"), "critical", "token-not-active", 0, AlertStep.ROLL_BACK,
         Strategy.CANARY_ONLY),
        (record(PhaseState.ROLLED_BACK, "full"), "critical", None, 0, AlertStep.IGNORE, None),
        (None, "critical", None, 0, AlertStep.IGNORE, None),
    ],
)
def test_after_alert(rec, severity, trigger, age, step, strategy):
    action = after_alert(PLAN, rec, severity, trigger, now=age)
    assert action.step is step, action.reason
    assert action.strategy is strategy


def test_budgets_default_to_the_seeds_procedures():
    budgets = PLAN.rollback_budgets
    assert [budgets.of(s).total_seconds() for s in (Strategy.FULL_UNDO, Strategy.CANARY_ONLY, Strategy.FEATURE_FLAG)] \
        == [300, 900, 60]
