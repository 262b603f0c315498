"""Fault onset → rollback started → rollback completed, on the real flow.

Runs the two-phase test plan several times with "Token is not active" errors starting in
the middle of the 10% canary's soak, and reports each time as a ratio to the time the
signal needs to be seen at all: one scrape interval plus one gate interval. Goal: rollback
starts within 1.5 × that, and completes within 2 s more.

    .venv/bin/python bench/detect_to_rollback.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "tests/plans/two-phase.yaml"
SPEED = 28800.0
# 24 plan hours into a 48 h soak: 3 s after the soak starts at this speed. A step change
# (20 errors/s) so the figure measures the pipeline — app → scrape → gate round → rollback —
# and not the wait for a sparse fault's first error (0.5 s on average at 2/s).
SCENARIO = """
name: token-not-active-mid-soak
faults:
  - {phase: canary-10pct, after: 24h, token_not_active_per_s: 20}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.entry.rehearse import rehearse
    from phasegate.rehearsal.world import SCRAPE_SECONDS

    scenario = Path(tempfile.mkdtemp()) / "mid-soak.yaml"
    scenario.write_text(SCENARIO)
    detected, completed = [], []
    with prefect_test_harness(server_startup_timeout=60), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for i in range(args.runs):
            with open(os.devnull, "w") as devnull:
                report = rehearse(PLAN, scenario=str(scenario), speed=SPEED, notifier=ConsoleNotifier(file=devnull))
            t = report["timings"]
            if report["outcome"] != "rolled_back" or "detected_after" not in t:
                print(f"run {i + 1}: no rollback ({report['outcome']}) — not counted")
                continue
            detected.append(t["detected_after"])
            completed.append(t["completed_after"])
            print(f"run {i + 1}: onset → rollback started {t['detected_after']:.2f}s, → completed "
                  f"{t['completed_after']:.2f}s (budget unit {t['budget']:.2f}s)")
    unit = SCRAPE_SECONDS + max(SCRAPE_SECONDS, 300 / SPEED)
    if not detected:
        print("RESULT detect_ratio=nan goal=1.5")
        return
    ratio = statistics.median(detected) / unit
    extra = statistics.median(c - d for c, d in zip(completed, detected, strict=True))
    print(f"scrape {SCRAPE_SECONDS}s + gate interval {unit - SCRAPE_SECONDS}s = {unit}s")
    print(f"median onset → rollback started: {statistics.median(detected):.2f}s = {ratio:.2f} × (scrape + interval)")
    print(f"median rollback started → completed: {extra:.2f}s (goal ≤ 2 s)")
    print(f"RESULT detect_ratio={ratio:.2f} goal=1.5")


if __name__ == "__main__":
    main()
