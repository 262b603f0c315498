"""Replica splits at real counts: whole pods, stable never emptied, surge before shrink."""

from __future__ import annotations

import pytest

from phasegate.capacity import actual_share, canary_beside, canary_split, scaled_bounds, stable_while_surging
from phasegate.errors import PlanError
from phasegate.plan import load_plan, semantic_problems
from tests.core.builders import SEED_PLAN_PATH, seed_plan


@pytest.mark.parametrize(("share", "total", "expected"), [
    (10, 10, (1, 9)), (50, 10, (5, 5)), (30, 10, (3, 7)), (10, 3, (1, 2)), (50, 3, (2, 1)),
    (0, 4, (0, 4)), (100, 4, (4, 0)), (95, 10, (9, 1)), (99, 2, (1, 1)),
])
def test_a_canary_phase_rounds_the_canary_up_to_whole_pods_and_keeps_a_stable_pod(
        share: float, total: int, expected: tuple[int, int]) -> None:
    assert canary_split(share, total) == expected


def test_one_replica_surges_a_second_pod_rather_than_emptying_stable() -> None:
    assert canary_split(10, 1) == (1, 1)
    assert canary_split(100, 1) == (1, 0)


def test_three_replicas_at_ten_percent_are_a_third_of_production() -> None:
    assert actual_share(*canary_split(10, 3)) == pytest.approx(33.33, abs=0.01)


def test_the_seed_plan_at_three_replicas_is_refused_for_both_canary_phases() -> None:
    with pytest.raises(PlanError) as exc:
        load_plan(SEED_PLAN_PATH, replicas=3)
    assert len(exc.value.problems) == 2
    assert "phases.1.canary_share: at 3 replica(s) canary-10pct: 10% planned → 1 canary + 2 stable = 33.3%" \
        in exc.value.problems[0]
    assert "phases.2.canary_share" in exc.value.problems[1]


def test_the_seed_plan_at_one_replica_is_refused_and_at_ten_is_exact() -> None:
    with pytest.raises(PlanError, match=r"1 canary \+ 1 stable = 50.0%"):
        load_plan(SEED_PLAN_PATH, replicas=1)
    shares = seed_plan().shares(10)
    assert [(s.phase, s.canary, s.stable, s.actual) for s in shares] == [
        ("canary-10pct", 1, 9, 10.0), ("canary-50pct", 5, 5, 50.0)]


def test_a_plan_may_widen_the_tolerance_for_small_deployments() -> None:
    plan = seed_plan()
    wide = plan.model_copy(update={"target": plan.target.model_copy(update={"share_tolerance": 25})})
    assert semantic_problems(wide, 3) == []
    assert len(semantic_problems(plan, 3)) == 2


@pytest.mark.parametrize(("ready", "expected"), [(0, 10), (1, 9), (3, 7), (5, 5), (9, 5)])
def test_stable_gives_up_one_pod_per_ready_canary_pod(ready: int, expected: int) -> None:
    assert stable_while_surging(10, 5, ready) == expected


@pytest.mark.parametrize("share", [5, 10, 25, 33.3, 50, 90])
def test_the_canary_beside_an_autoscaled_stable_comes_closest_to_the_share(share: float) -> None:
    for stable in range(1, 120):
        canary = canary_beside(share, stable)
        off = abs(actual_share(canary, stable) - share)
        # No other whole number of pods (at least one) is closer to the plan's share.
        assert canary >= 1 and all(abs(actual_share(c, stable) - share) >= off - 1e-9 for c in range(1, 4 * stable))
    assert (canary_beside(10, 9), canary_beside(10, 22), canary_beside(50, 7), canary_beside(10, 1)) == (1, 2, 7, 1)


def test_stable_narrowed_to_its_share_of_the_autoscaler_bounds_in_whole_pods() -> None:
    assert scaled_bounds(10, 4, 20) == (1, 2)
    assert scaled_bounds(50, 3, 11) == (2, 6)
