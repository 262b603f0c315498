"""Nobody is watching is never true: triggers are measured while a run waits for a person."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.scenarios import load_scenario
from phasegate.rehearsal.world import Approver, world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SPEED = 172800.0

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def state_of(w) -> str | None:
    d = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
    return (d["metadata"].get("annotations") or {}).get("phasegate.dev/phase-state")


def test_token_not_active_during_the_approval_pause_rolls_the_canary_back_with_nobody_answering():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        result: dict = {}
        # Nobody answers, and the pause would last two minutes before timing out into a halt.
        nobody = Approver("ui", say=lambda _: None)
        runner = threading.Thread(target=lambda: result.update(run_in(w, TWO_PHASE, approve=nobody,
                                                                      approval_floor=120.0)))
        runner.start()
        deadline = time.time() + 90
        while state_of(w) != "passed" and time.time() < deadline:
            time.sleep(0.05)
        assert state_of(w) == "passed", "canary-10pct never passed"
        # The canary breaks while the run waits for its approval.
        w.app.scenario = load_scenario("token-not-active")
        runner.join(timeout=100)
        assert not runner.is_alive(), "the run waited for a person although a trigger fired"

    assert result["outcome"] == "rolled_back", result.get("approvals")
    rb = result["rollback"]
    assert (rb["phase"], rb["strategy"], rb["gates"]) == ("canary-10pct", "canary_only", ["token-not-active"])
    assert rb["ok"] and "during the approval pause" in rb["reason"]
    (approval,) = result["approvals"]
    assert approval["fired"] and approval["watch_rounds"] >= 1
    texts = [n["text"] for n in result["notifications"]]
    assert any("still measured" in t for t in texts if "waiting for approval" in t)
    assert any("rolling back without waiting for approval" in t for t in texts)
    # The phase's gates table shows the round that ended the pause on top, marked, after the soak's.
    rows = _gates_rows(result["rollout"], "canary-10pct")
    assert rows[0]["result"] == "✗ Failed" and rows[0]["soak"].startswith("pause +"), rows[:2]
    assert rows[0]["token-not-active"].startswith("✗")
    assert any(not r["soak"].startswith("pause") for r in rows[1:]), "the soak's rounds are gone"


def _gates_rows(rollout: str, phase: str) -> list[dict]:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks import evidence

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[evidence._key(rollout, phase, "gates")])))
    newest = max(found, key=lambda a: a.updated)
    return json.loads(newest.data) if isinstance(newest.data, str) else newest.data


def test_a_halted_rollout_whose_canary_still_serves_goes_on_being_watched_and_rolls_back_on_a_trigger():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        result: dict = {}
        # Nobody approves canary-10pct: the pause times out and the rollout halts, canary in place.
        def rollout() -> None:
            try:
                result.update(run_in(w, TWO_PHASE, approve="timeout@canary-10pct", approval_floor=20.0))
            except BaseException as exc:  # named by the assertion below
                result["error"] = repr(exc)

        runner = threading.Thread(target=rollout)
        runner.start()
        deadline = time.time() + 120
        while state_of(w) != "halted" and time.time() < deadline:
            time.sleep(0.05)
        assert state_of(w) == "halted"
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is not None
        w.app.scenario = load_scenario("token-not-active")
        runner.join(timeout=60)
        assert not runner.is_alive()

    assert result.get("outcome") == "rolled_back", result.get("error") or result.get("halted")
    rb = result["rollback"]
    assert (rb["strategy"], rb["gates"], rb["ok"]) == ("canary_only", ["token-not-active"], True)
    watched = [e for e in result["events"] if e["event"] == "halted_watch"]
    assert watched and watched[0]["fired"]


def test_a_prefect_api_outage_during_lease_renewal_does_not_cancel_the_rollout_or_its_rollback(monkeypatch):
    """The concurrency lease is renewed in the background; when every renewal fails (the
    Prefect API is briefly unreachable), the rollout goes on and its rollback completes."""
    import httpx
    from prefect.client.orchestration import SyncPrefectClient

    failed: list[float] = []

    def unreachable(self, *args, **kwargs):
        failed.append(time.time())
        raise httpx.ConnectError("Prefect API unreachable")

    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", unreachable)
    # Renew every second, not every 15 s: a rehearsed rollout is over in ~20 s of wall time.
    monkeypatch.setattr("flows.lock.RENEW_SECONDS", 1.0)
    with world(load_plan(TWO_PHASE), scenario="token-not-active", speed=SPEED,
               notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        report = run_in(w, TWO_PHASE)
    assert len(failed) >= 3  # every attempt of the renewal failed
    assert report["outcome"] == "rolled_back" and report["rollback"]["ok"]
