"""The proof's cases and how a rehearsal's report is judged against them (pure core)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phasegate.plan import load_plan
from phasegate.prove import Case, Proof, covered, judge, plan_cases

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"


def _cases() -> dict[str, Case]:
    return {c.id: c for c in plan_cases(load_plan(SEED))}


def test_the_seed_plan_gets_a_healthy_case_one_per_trigger_and_one_per_criterion() -> None:
    plan = load_plan(SEED)
    cases = plan_cases(plan)
    assert cases[0].id == "healthy" and cases[0].expect == "promoted"
    triggers = [(p.name, t.name, t.rollback.value) for p in plan.phases for t in p.triggers]
    assert [(c.phase, c.gate, c.strategy) for c in cases if c.kind == "trigger"] == triggers
    criteria = [(p.name, g.name) for p in plan.phases for g in p.success]
    assert [(c.phase, c.gate) for c in cases if c.kind == "criterion"] == criteria
    assert all(c.expect == "held" for c in cases if c.kind == "criterion")


def test_a_fault_starts_after_the_phases_warm_up_and_two_trigger_rounds() -> None:
    plan = load_plan(SEED)
    case = _cases()["canary-10pct/token-not-active"]
    phase = plan.phase("canary-10pct")
    assert case.after_seconds == phase.initial_delay.total_seconds() + 2 * phase.trigger_every.total_seconds()
    assert case.fault() == {"phase": "canary-10pct", "gate": "token-not-active", "push": 2.0,
                            "after": f"{case.after_seconds:g}s"}


def test_a_criterion_pushes_between_its_bound_and_a_looser_trigger_on_the_same_metric() -> None:
    # canary: p99 delta < 20 ms (criterion) beside p99 delta < 50 ms (trigger): aim at 35 ms.
    case = _cases()["canary-10pct/latency-within-range"]
    assert case.push == pytest.approx(1.75)
    assert case.covered_by is None


def test_a_zero_criterion_beside_a_zero_trigger_on_its_metric_is_covered_by_the_triggers_case() -> None:
    case = _cases()["full/zero-token-not-active"]
    assert case.covered_by == "full/token-not-active"


def _report(outcome: str, **rollback: Any) -> dict[str, Any]:
    rb = {"phase": "canary-10pct", "strategy": "canary_only", "gates": ["token-not-active"], "ok": True,
          **rollback} if outcome == "rolled_back" else None
    return {"outcome": outcome, "rollback": rb, "phases": [{"reason": "why"}],
            "timings": {"detected_after": 2.0, "budget": 2.0, "detected_after_plan": 3600.0} if rb else {}}


@pytest.mark.parametrize(("report", "problem"), [
    (_report("rolled_back"), ""),
    (_report("rolled_back", strategy="full_undo"), "rolled back by full_undo, not canary_only"),
    (_report("rolled_back", gates=["lock-timeout-rate"]), "rolled back on lock-timeout-rate, not token-not-active"),
    (_report("rolled_back", phase="full"), "rolled back in full, not canary-10pct"),
    (_report("rolled_back", ok=False), "the rollback was not verified"),
    (_report("promoted"), "expected a rollback, got promoted"),
    (_report("halted"), "expected a rollback, got halted"),
])
def test_a_trigger_case_matches_only_a_verified_rollback_by_its_trigger_and_strategy(report: dict[str, Any],
                                                                                     problem: str) -> None:
    result = judge(_cases()["canary-10pct/token-not-active"], report)
    assert result.matched is (problem == "")
    assert problem in result.problem


def test_a_trigger_case_detected_later_than_one_and_a_half_scrape_plus_gate_intervals_does_not_match() -> None:
    report = _report("rolled_back")
    report["timings"].update(detected_after=3.1, budget=2.0)
    result = judge(_cases()["canary-10pct/token-not-active"], report)
    assert not result.matched and "over 3.0 s" in result.problem
    report["timings"].update(detected_after=2.9)
    assert judge(_cases()["canary-10pct/token-not-active"], report).matched


def _failed_round(report: dict[str, Any], phase: str, gate: str) -> dict[str, Any]:
    report["phases"] = [{"name": phase, "reason": "criteria unmet", "rounds": [
        [{"gate": gate, "outcome": "Successful"}], [{"gate": gate, "outcome": "Failed"}]]}]
    return report


@pytest.mark.parametrize(("outcome", "fired", "matched"), [
    ("halted", [], True),
    ("rolled_back", [], True),  # the hold's pause timed out into a rollback: still never promoted
    ("rolled_back", ["token-not-active"], False),  # the fault broke more than the criterion
    ("promoted", [], False),
])
def test_a_criterion_case_matches_when_the_rollout_holds_without_firing_a_trigger(
        outcome: str, fired: list[str], matched: bool) -> None:
    report = _failed_round(_report(outcome, gates=fired), "canary-10pct", "latency-within-range")
    assert judge(_cases()["canary-10pct/latency-within-range"], report).matched is matched


def test_a_hold_no_criterion_caused_proves_nothing_and_one_by_another_criterion_says_which() -> None:
    case = _cases()["canary-10pct/latency-within-range"]
    # No data, a slow approval: held, but by no criterion.
    result = judge(case, _report("halted"))
    assert not result.matched and "latency-within-range never failed in canary-10pct" in result.problem
    # The same fault broke another criterion first: the criteria held the rollout.
    held_by_another = judge(case, _failed_round(_report("halted"), "canary-10pct", "lock-success"))
    assert held_by_another.matched and held_by_another.actual == "held by lock-success"
    # A trigger that read Failed once (under its failure limit) is no criterion holding it.
    by_a_trigger = judge(case, _failed_round(_report("halted"), "canary-10pct", "token-not-active"))
    assert not by_a_trigger.matched
    own = judge(case, _failed_round(_report("halted"), "canary-10pct", "latency-within-range"))
    assert own.matched and own.actual == "halted"


def test_a_criterion_whose_fault_fires_only_a_trigger_on_its_own_metric_is_covered_by_it() -> None:
    # At the workload's levels the p99 trigger fired before the criterion could hold: breaking
    # the criterion always fires it, which rolls back, so the criterion is covered, not failed.
    result = judge(_cases()["canary-10pct/latency-within-range"], _report("rolled_back", gates=["p99-latency-increase"]))
    assert result.matched and result.actual == "covered by p99-latency-increase"


def test_the_healthy_case_matches_only_a_promotion() -> None:
    case = _cases()["healthy"]
    assert judge(case, _report("promoted")).matched
    assert not judge(case, _report("halted")).matched


def test_a_covered_criterion_matches_as_its_trigger_case_does() -> None:
    cases = _cases()
    trigger = judge(cases["full/token-not-active"], _report("rolled_back", phase="full", strategy="full_undo"))
    assert trigger.matched
    assert covered(cases["full/zero-token-not-active"], trigger).matched
    failed = judge(cases["full/token-not-active"], _report("promoted"))
    assert not covered(cases["full/zero-token-not-active"], failed).matched


def test_the_proof_matches_only_when_every_case_did_and_names_the_plan_by_its_content() -> None:
    cases = _cases()
    good = judge(cases["healthy"], _report("promoted"))
    bad = judge(cases["canary-10pct/token-not-active"], _report("promoted"))
    proof = Proof(str(SEED), "token-refresh-locking", "ab" * 32, [good], 28800.0, 1.0)
    assert proof.matched and "every case matched" in proof.markdown()
    proof.results.append(bad)
    assert not proof.matched
    assert "1 of 2 cases did not match" in proof.markdown()
    assert "canary-10pct/token-not-active: expected a rollback, got promoted" in proof.table()
    assert proof.to_json()["sha256"] == "ab" * 32


def test_detection_is_timed_to_the_first_failed_round_of_the_gate_not_to_the_rollbacks_start() -> None:
    report = _report("rolled_back")
    report["speed"] = 3600.0
    report["rollback"]["started_plan"] = 100_000.0
    report["timings"].update(detected_after=9.0, detected_after_plan=9.0 * 3600)  # onset at plan 67 600
    rounds = [[{"gate": "token-not-active", "outcome": "Successful", "at": 68_000.0}],
              [{"gate": "token-not-active", "outcome": "Failed", "at": 67_600.0 + 2.5 * 3600}]]
    report["phases"] = [{"name": "canary-10pct", "rounds": rounds, "reason": ""}]
    result = judge(_cases()["canary-10pct/token-not-active"], report, cycle_wall=2.0)
    assert result.detected_after_wall == pytest.approx(2.5)
    assert result.rollback_after_wall == 9.0
    assert result.matched  # 2.5 s <= 1.5 x 2 s, though the rollback flow started 9 s after onset


def test_a_trigger_read_failed_during_the_pause_after_a_held_soak_is_detected_then() -> None:
    # A criterion on the same metric fails first and ends the soak in a hold; the trigger is
    # read on during the pause, and its first Failed reading there is the detection.
    report = _report("rolled_back")
    report["speed"] = 3600.0
    report["rollback"]["started_plan"] = 100_000.0
    report["timings"].update(detected_after=9.0, detected_after_plan=9.0 * 3600)  # onset at plan 67 600
    report["phases"] = [{"name": "canary-10pct", "reason": "", "rounds": [
        [{"gate": "token-not-active", "outcome": "Successful", "at": 67_600.0 + 0.5 * 3600}]]}]
    report["events"] = [
        {"event": "watch_round", "phase": "canary-10pct", "plan_time": 67_600.0 + 1.2 * 3600,
         "outcomes": {"token-not-active": "Successful"}},
        {"event": "watch_round", "phase": "canary-10pct", "plan_time": 67_600.0 + 1.7 * 3600,
         "outcomes": {"token-not-active": "Failed"}},
        {"event": "watch_round", "phase": "staging", "plan_time": 67_600.0 + 1.0 * 3600,
         "outcomes": {"token-not-active": "Failed"}},
    ]
    result = judge(_cases()["canary-10pct/token-not-active"], report, cycle_wall=2.0)
    assert result.detected_after_wall == pytest.approx(1.7)
    assert result.matched


@pytest.mark.parametrize(("monitoring", "blamed"), [
    ({"failed_share": 0.08, "timed_out_share": 0.0, "slowest_scrape_s": 0.3, "scrape_timeout_s": 0.5}, False),
    ({"failed_share": 0.08, "timed_out_share": 0.05, "slowest_scrape_s": 0.5, "scrape_timeout_s": 0.5}, True),
])
def test_a_mismatch_blames_the_world_only_when_its_scrapes_timed_out(monitoring: dict[str, Any], blamed: bool) -> None:
    # Scrapes of pods a rollback deleted fail at once on any cluster: that is no overload.
    report = _report("halted")
    report["monitoring"] = monitoring
    result = judge(_cases()["canary-10pct/token-not-active"], report)
    assert not result.matched
    assert ("the rehearsal world was overloaded: 5.0% of scrapes timed out" in result.problem) is blamed
