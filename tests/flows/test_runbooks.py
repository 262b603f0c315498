"""The seed's rollback procedures started by a person, on the emulator with a real Prefect API
and a real Prometheus: after a promoted rollout (full undo, feature flag), after a canary
halted for a person (canary only, taking over from it), and refused while a live rollout
holds the target. Each prints its wall and plan time beside the seed's budget."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flows.runbook import RunbookRefused, manual_rollback
from phasegate import runctx
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import Strategy, load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SPEED = 172800.0

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


@pytest.fixture
def seed_world():
    notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=notifier) as w:
        yield w


def stable(w):
    return w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")


def image_of(d):
    return next(c["image"] for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "bodhi-server")


def canary(w):
    return w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary")


def roll_back(w, strategy, reason="paged by hand", who="alice"):
    with runctx.use(w.run_context(approval_floor=1.0, on_pause=None)):
        report = manual_rollback(str(TWO_PHASE), strategy, reason, who)
    budget = w.plan.rollback_budgets.of(strategy).total_seconds()
    print(f"\n{strategy.value}: {report['wall_seconds']:.2f} s wall, {report['plan_seconds']:.0f} s plan time; "
          f"budget {budget:.0f} s (seed); within: {report['within_budget']}")
    return report


def promote(w):
    report = run_in(w, TWO_PHASE)
    assert report["outcome"] == "promoted", report.get("halted") or report.get("rollback")
    assert image_of(stable(w)) == w.image


def test_immediate_rollback_after_promotion_undoes_the_release_within_five_minutes(seed_world):
    w = seed_world
    previous = "ghcr.io/bodhi/bodhi-server:1.5.0"
    promote(w)
    report = roll_back(w, Strategy.FULL_UNDO)
    assert report["ok"] and report["cluster_verified"]
    assert report["budget_seconds"] == 300 and report["within_budget"]
    assert image_of(stable(w)).rsplit(":", 1)[-1] == previous.rsplit(":", 1)[-1]
    annotations = stable(w)["metadata"]["annotations"]
    assert annotations["phasegate.dev/phase-state"] == "rolled-back"
    assert annotations["phasegate.dev/rolled-back"] == "full:full_undo"
    assert "phasegate.dev/promoted-at" not in annotations  # no more reviews of a release that is gone
    assert "manual (alice): paged by hand" in annotations["phasegate.dev/rollback"]
    # Nothing is left to undo: a second immediate rollback is refused, not one revision too far.
    with pytest.raises(RunbookRefused, match="already rolled back"):
        roll_back(w, Strategy.FULL_UNDO)


def test_feature_flag_rollback_after_promotion_switches_the_flag_off_within_a_minute(seed_world):
    w = seed_world
    promote(w)
    report = roll_back(w, Strategy.FEATURE_FLAG)
    assert report["ok"] and report["final_strategy"] == "feature_flag"
    assert report["budget_seconds"] == 60 and report["within_budget"]
    cm = w.emulator.store.get("configmaps", "bodhi", "bodhi-config")
    assert cm["data"]["enable_token_refresh_locking"] == "false"
    assert image_of(stable(w)) == w.image  # the new version stays, its code path off


def test_canary_only_after_promotion_is_refused_as_there_is_no_canary(seed_world):
    w = seed_world
    promote(w)
    with pytest.raises(RunbookRefused, match="no canary runs"):
        roll_back(w, Strategy.CANARY_ONLY)
    assert image_of(stable(w)) == w.image


def test_refused_while_a_live_rollout_holds_the_target_then_takes_over_once_it_halted(seed_world):
    w = seed_world
    result: dict = {}
    # Nobody answers the canary's approval: the rollout waits (live, watching its triggers),
    # then halts as the plan says on timeout.
    rollout = threading.Thread(target=lambda: result.update(run_in(w, TWO_PHASE, approve="timeout@canary-10pct",
                                                                   approval_floor=25.0)))
    rollout.start()
    try:
        deadline = threading.Event()
        while not deadline.wait(0.25):
            state = (stable(w)["metadata"].get("annotations") or {}).get("phasegate.dev/phase-state")
            if state in ("passed", "held") and canary(w) is not None:
                break
        with pytest.raises(RunbookRefused, match="live"):
            roll_back(w, Strategy.CANARY_ONLY)
        assert canary(w) is not None  # nothing was touched
    finally:
        rollout.join(120)
    assert result["outcome"] == "halted"
    report = roll_back(w, Strategy.CANARY_ONLY, reason="canary held too long")
    assert report["ok"] and report["budget_seconds"] == 900 and report["within_budget"]
    assert canary(w) is None
    assert stable(w)["spec"]["replicas"] == 10
    assert image_of(stable(w)) != w.image
