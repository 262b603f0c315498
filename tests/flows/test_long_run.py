"""The seed plan at its real cadence: 577 gate rounds per 48 h soak, about 2,000 in all.

The clock is compressed, not the number of rounds: no wall-time floor per round, so each
48 h soak judges every gate 577 times (and the triggers in between, every minute of plan
time), on the real flows, a real Prefect API and a real Prometheus. What breaks only at
that scale — flow-run parameters that grow with the history, limits meant for forty rounds
— breaks here.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.scenarios import load_scenario
from phasegate.rehearsal.world import DISCOVERY_SECONDS, SCRAPE_SECONDS, world
from phasegate.runctx import Pacing

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
SPEED = 6000.0  # a 5-minute round every 50 ms
# No floor per round; the window and the warm-up keep theirs: rate() needs two scrapes, and
# a new pod is discovered by Prometheus up to DISCOVERY_SECONDS after it appears.
NO_FLOORS = Pacing(min_window_wall=4 * SCRAPE_SECONDS, min_warmup_wall=4 * SCRAPE_SECONDS + DISCOVERY_SECONDS,
                   min_approval_wall=15.0, approval_poll_seconds=1)
LIMIT = 64 * 1024  # far below Prefect's 512 KiB refusal, and flat in the number of rounds

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def largest_parameters_since(started: datetime) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
                                     limit=200)
    assert runs, "no flow run read back"
    return max(len(json.dumps(r.parameters, default=str).encode()) for r in runs)


def full_rounds(report: dict) -> Counter:
    return Counter(e["phase"] for e in report["events"] if e["event"] == "round" and e.get("full"))


def test_healthy_seed_plan_promotes_after_577_rounds_per_48h_soak_with_small_parameters():
    started = datetime.now(UTC)
    with world(load_plan(SEED), speed=SPEED, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        report = run_in(w, SEED, pacing=NO_FLOORS)
    assert report["outcome"] == "promoted", [(p["name"], p["reason"]) for p in report["phases"]]
    rounds = full_rounds(report)
    assert {p: rounds[p] for p in ("staging", "canary-10pct", "canary-50pct")} == dict.fromkeys(
        ("staging", "canary-10pct", "canary-50pct"), 577)
    assert rounds["full"] == 289  # its 24 h soak
    assert sum(rounds.values()) >= 2000
    assert largest_parameters_since(started) < LIMIT


def test_a_trigger_at_round_500_of_canary_50pct_rolls_back_and_no_parameter_outgrows_the_limit():
    started = datetime.now(UTC)
    seen = Counter()
    with world(load_plan(SEED), speed=SPEED, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        broken = load_scenario("token-not-active")

        def watch(event) -> None:
            if event.get("event") == "round" and event.get("full") and event.get("phase") == "canary-50pct":
                seen["canary-50pct"] += 1
                if seen["canary-50pct"] == 500:
                    seen["fault_at"] = int(time.time())
                    w.app.scenario = broken

        report = run_in(w, SEED, pacing=NO_FLOORS, on_event=watch)
    assert report["outcome"] == "rolled_back", [(p["name"], p["reason"]) for p in report["phases"]]
    rb = report["rollback"]
    assert (rb["phase"], rb["strategy"], rb["gates"]) == ("canary-50pct", "canary_only", ["token-not-active"])
    assert rb["ok"]
    assert 500 <= full_rounds(report)["canary-50pct"] < 577
    assert largest_parameters_since(started) < LIMIT
