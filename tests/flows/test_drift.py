"""The world the rollout left is checked every round: drift halts, naming who changed what."""

from __future__ import annotations

import os
import threading
import time
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


def record(w) -> dict:
    return w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["metadata"].get("annotations") or {}


def test_the_old_image_put_back_during_full_halts_the_rollout_instead_of_promoting_it():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        old = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")[
            "spec"]["template"]["spec"]["containers"][0]["image"]
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(run_in(w, TWO_PHASE, approval_floor=5.0)))
        runner.start()
        deadline = time.time() + 120
        while not (record(w).get("phasegate.dev/phase") == "full"
                   and record(w).get("phasegate.dev/phase-state") == "soaking") and time.time() < deadline:
            time.sleep(0.05)
        assert record(w).get("phasegate.dev/phase-state") == "soaking"

        def put_back(d: dict) -> dict:  # as `kubectl set image` by a person mid-incident
            d["spec"]["template"]["spec"]["containers"][0]["image"] = old
            return d

        w.emulator.store.mutate("apps/deployments", "bodhi", "bodhi-server", put_back, manager="kubectl-set")
        runner.join(timeout=120)
        assert not runner.is_alive()
        assert "phasegate.dev/promoted-at" not in record(w)
    assert result["outcome"] == "halted", [(p["name"], p["reason"]) for p in result["phases"]]
    drift = [n for n in result["notifications"] if n["kind"] == "drift"]
    assert drift and drift[0]["severity"] == "critical"
    assert "kubectl-set" in drift[0]["text"] and old in drift[0]["text"]
