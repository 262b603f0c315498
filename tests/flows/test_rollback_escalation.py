"""A feature flag is the softest rollback and may be no cure: then the rollback escalates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SPEED = 172800.0

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def test_lock_timeouts_the_flag_does_not_cure_escalate_from_configmap_to_env_var_to_undo():
    scenario = ROOT / "tests/plans/scenarios/lock-timeouts-despite-flag.yaml"
    with world(load_plan(TWO_PHASE), scenario=str(scenario), speed=SPEED,
               notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        report = run_in(w, TWO_PHASE)
        stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
        image = stable["spec"]["template"]["spec"]["containers"][0]["image"]
        config = w.emulator.store.get("configmaps", "bodhi", "bodhi-config")["data"]
    assert report["outcome"] == "rolled_back"
    rb = report["rollback"]
    assert (rb["strategy"], rb["phase"], rb["final_strategy"], rb["escalated"]) == (
        "feature_flag", "full", "full_undo", True)
    steps = [(s["strategy"], s["via"], s["metrics_recovered"]) for s in rb["steps"]]
    # The old version has no locking code: after the undo the metric that fired is absent,
    # which is not called recovered, only not failing.
    assert steps == [("feature_flag", "configmap", False), ("feature_flag", "env", False),
                     ("full_undo", "undo", None)]
    assert rb["ok"] and image != w.image and config["enable_token_refresh_locking"] == "false"
    kinds = [(n["kind"], n["severity"]) for n in report["notifications"]]
    assert ("rollback_failed", "critical") in kinds  # the escalation is announced as critical
    assert ("rollback_verified", "info") in kinds


def test_a_flag_that_switches_the_code_path_off_is_not_escalated_and_its_timings_are_in_plan_time():
    scenario = ROOT / "tests/plans/scenarios/lock-timeouts-at-full.yaml"
    with world(load_plan(TWO_PHASE), scenario=str(scenario), speed=SPEED,
               notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        report = run_in(w, TWO_PHASE)
    rb = report["rollback"]
    (step,) = rb["steps"]
    # Switched off, the locking code soon reports nothing: no data is neither a cure nor a
    # failure, and a rate that reads 0 first is a cure; either way nothing more drastic is done.
    assert (step["via"], rb["escalated"], rb["ok"]) == ("configmap", False, True)
    assert step["metrics_recovered"] is not False
    assert (step["recovered_after_plan"] is not None) == (step["metrics_recovered"] is True)
    assert report["timings"]["completed_after_plan"] >= report["timings"]["detected_after_plan"] > 0
