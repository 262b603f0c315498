"""next action after a round, a soak and an approval — read like the plan."""

from __future__ import annotations

import pytest

from phasegate.analysis import Outcome
from phasegate.decide import Decision, Step, after_approval, after_round, approver_allowed
from phasegate.plan import Strategy
from tests.core.builders import gate, m, phase, seed_plan, trigger

PLAN = seed_plan()
CANARY = PLAN.phase("canary-10pct")
FULL = PLAN.phase("full")
S, F, I, E = Outcome.SUCCESSFUL, Outcome.FAILED, Outcome.INCONCLUSIVE, Outcome.ERROR


def healthy(phase_, rounds=3):
    return {g.name: [m(S, g.name)] * rounds for g in phase_.gates()}


def test_token_not_active_error_in_canary_rolls_back_canary_only():
    history = healthy(CANARY)
    history["token-not-active"] = [m(S, "token-not-active"), m(F, "token-not-active", "1 > 0")]
    action = after_round(CANARY, history, soak_done=False)
    assert action.step is Step.ROLLBACK
    assert action.strategy is Strategy.CANARY_ONLY
    assert action.gates == ("token-not-active",)


def test_trigger_fires_mid_soak_without_waiting_for_the_end():
    history = healthy(CANARY, 1)
    history["p99-latency-increase"] = [m(F, "p99-latency-increase")]
    assert after_round(CANARY, history, soak_done=False).step is Step.ROLLBACK


def test_lock_timeouts_at_full_rollout_flip_the_feature_flag():
    history = healthy(FULL)
    history["lock-timeout-rate"] = [m(F, "lock-timeout-rate")]
    action = after_round(FULL, history, soak_done=False)
    assert (action.step, action.strategy) == (Step.ROLLBACK, Strategy.FEATURE_FLAG)


def test_most_drastic_strategy_wins_when_several_triggers_fire():
    history = healthy(FULL)
    history["lock-timeout-rate"] = [m(F, "lock-timeout-rate")]
    history["token-not-active"] = [m(F, "token-not-active")]
    action = after_round(FULL, history, soak_done=False)
    assert action.strategy is Strategy.FULL_UNDO
    assert set(action.gates) == {"lock-timeout-rate", "token-not-active"}


def test_healthy_soak_keeps_soaking_until_done_then_advances():
    assert after_round(CANARY, healthy(CANARY), soak_done=False).step is Step.CONTINUE
    assert after_round(CANARY, healthy(CANARY), soak_done=True).step is Step.ADVANCE


def test_marginal_latency_under_trigger_but_over_criterion_holds_for_a_human():
    # +30 ms: under the 50 ms trigger, over the 20 ms success criterion.
    # The seed tolerates 3 noisy rounds of its 577 (failure_limit: 3); a real regression fails
    # every round, and the fourth failure holds.
    history = healthy(CANARY)
    history["latency-within-range"] = [m(S, "latency-within-range")] + [m(F, "latency-within-range", "30 breaks")] * 3
    assert after_round(CANARY, history, soak_done=False).step is Step.CONTINUE
    history["latency-within-range"].append(m(F, "latency-within-range", "30 breaks"))
    action = after_round(CANARY, history, soak_done=False)
    assert action.step is Step.HOLD
    assert "latency-within-range" in action.gates


def test_no_data_at_the_end_of_the_soak_holds_never_advances():
    history = healthy(CANARY)
    history["lock-success"] = [m(S, "lock-success"), m(I, "lock-success")]
    assert after_round(CANARY, history, soak_done=False).step is Step.CONTINUE
    action = after_round(CANARY, history, soak_done=True)
    assert action.step is Step.HOLD


def test_a_gate_past_its_inconclusive_limit_holds_at_once_not_at_the_end_of_the_soak():
    phase = CANARY.model_copy(update={"success": [g.model_copy(update={"inconclusive_limit": 1})
                                                  if g.name == "lock-success" else g for g in CANARY.success]})
    history = healthy(phase)
    history["lock-success"] = [m(S, "lock-success"), m(I, "lock-success")]
    assert after_round(phase, history, soak_done=False).step is Step.CONTINUE
    history["lock-success"] = [m(S, "lock-success"), m(I, "lock-success"), m(S, "lock-success"), m(I, "lock-success")]
    action = after_round(phase, history, soak_done=False)
    assert action.step is Step.HOLD and action.gates == ("lock-success",)
    assert "rounds 2, 4 without data" in action.reason


def test_a_trigger_past_its_inconclusive_limit_holds_too():
    history = healthy(CANARY)
    history["token-not-active"] = [m(I, "token-not-active")] * 6  # 1% of 577 rounds is 5
    action = after_round(CANARY, history, soak_done=False)
    assert action.step is Step.HOLD and "token-not-active" in action.gates


@pytest.mark.parametrize(("limit", "rounds", "allowed"), [(0, 577, 0), (3, 577, 3), ("1%", 577, 5), ("2%", 577, 11),
                                                          ("0.5%", 100, 0), ("100%", 10, 10)])
def test_a_limit_is_a_count_or_a_share_of_the_soaks_rounds(limit, rounds, allowed):
    assert gate(inconclusive_limit=limit).inconclusive_allowed(rounds) == allowed


def test_the_seeds_48h_soak_at_5m_has_577_rounds():
    assert CANARY.rounds == 577


def test_metrics_outage_past_the_error_limit_rolls_back_by_default():
    history = healthy(CANARY, 1)
    for name in history:
        history[name] = history[name] + [m(E, name, "connection refused")] * 5
    action = after_round(CANARY, history, soak_done=False)
    assert (action.step, action.strategy) == (Step.ROLLBACK, Strategy.CANARY_ONLY)


def test_metrics_outage_halts_when_plan_says_halt():
    p = phase(on_error="halt", triggers=[trigger(name="t")])
    action = after_round(p, {"t": [m(E, "t")] * 5}, soak_done=False)
    assert action.step is Step.HALT


def test_metrics_outage_within_the_limit_keeps_soaking():
    history = healthy(CANARY, 1)
    history["token-not-active"] = [m(S, "token-not-active")] + [m(E, "token-not-active")] * 4
    assert after_round(CANARY, history, soak_done=False).step is Step.CONTINUE


def test_reject_rolls_back_with_the_phase_rollback():
    action = after_approval(CANARY, Decision.REJECT, who="alice", comment="tickets up")
    assert (action.step, action.strategy) == (Step.ROLLBACK, Strategy.CANARY_ONLY)
    assert "alice" in action.reason and "tickets up" in action.reason


def test_timeout_halts_when_plan_says_halt():
    assert after_approval(CANARY, Decision.TIMEOUT).step is Step.HALT


def test_timeout_rolls_back_when_plan_says_rollback():
    p = phase(approval={"on_timeout": "rollback"})
    assert after_approval(p, Decision.TIMEOUT).step is Step.ROLLBACK


def test_approve_advances():
    assert after_approval(CANARY, Decision.APPROVE, who="bob").step is Step.ADVANCE


def test_approver_allowlist_is_case_insensitive_and_empty_means_anyone():
    restricted = phase(approval={"approvers": ["Alice", "bob"]})
    assert approver_allowed(restricted, "alice")
    assert not approver_allowed(restricted, "mallory")
    assert approver_allowed(phase(), "anyone")


def _judged(critical: bool):
    return phase(success=[gate(name="latency-judge", kind="judge", judge={"direction": "increase",
                                                                          "critical": critical})])


def test_a_failed_critical_judge_rolls_back_at_once_as_kayenta_fails_the_run():
    action = after_round(_judged(True), {"latency-judge": [m(F, "latency-judge", "High")]}, soak_done=False)
    assert (action.step, action.strategy, action.gates) == (Step.ROLLBACK, Strategy.CANARY_ONLY, ("latency-judge",))
    assert "critical judge failed" in action.reason


def test_a_failed_judge_that_is_not_critical_holds_for_a_person():
    action = after_round(_judged(False), {"latency-judge": [m(F, "latency-judge", "High")]}, soak_done=False)
    assert action.step is Step.HOLD
