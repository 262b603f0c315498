"""How long a person waits for ``phasegate rehearse``: to the first gate round, and to the end.

Runs the command as a user types it, as a subprocess, for the seed plan:

    phasegate rehearse deployments/plans/token-refresh-locking.yaml --scenario token-not-active

and times, from the moment the command is started:

* the first gate round: the ``first gate round`` line the command prints (and, as a cross-check
  that also works for a build without that line, the first ``round`` event of its ``--report``);
* the exit, with its exit code (3: the canary was rolled back, as the scenario expects).

Goals (issue 18): the first round within 10 s, the whole token-not-active rehearsal within 30 s.
Ends with one line ``RESULT rehearse_first_round_s=… goal=10``; the end-to-end figure is printed
above it as ``rehearse_total_s``.

    .venv/bin/python bench/rehearse_startup.py [--runs 1] [--scenario token-not-active] [--speed 28800]

Without ``PREFECT_API_URL`` the command starts its own temporary Prefect server, as a first-time
user's does; set it to a running ``prefect server start`` to time that case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "deployments/plans/token-refresh-locking.yaml"
FIRST_ROUND_LINE = "first gate round"
GOAL_FIRST_ROUND_S = 10.0
GOAL_TOTAL_S = 30.0


def one_run(scenario: str, speed: float | None) -> dict[str, float | int | None]:
    report = Path(tempfile.mkdtemp(prefix="rehearse-bench-")) / "report.json"
    phasegate = Path(sys.executable).with_name("phasegate")
    cmd = [str(phasegate), "rehearse", str(PLAN), "--scenario", scenario, "--report", str(report)]
    if speed is not None:
        cmd += ["--speed", f"{speed:g}"]
    seen: dict[str, float] = {}
    started_wall = time.time()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "160"})
    assert proc.stdout is not None

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if FIRST_ROUND_LINE in line and "line" not in seen:
                seen["line"] = time.monotonic() - started

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait()
    total = time.monotonic() - started
    reader.join(timeout=5)
    from_report = None
    if report.exists():
        events = json.loads(report.read_text()).get("events") or []
        rounds = [e["wall"] for e in events if e.get("event") == "round"]
        if rounds:
            from_report = min(rounds) - started_wall
    return {"first_round_line": seen.get("line"), "first_round_report": from_report, "total": total, "exit": code}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--scenario", default="token-not-active")
    parser.add_argument("--speed", type=float, default=None, help="default: the command's own default")
    args = parser.parse_args()

    print(f"phasegate rehearse {PLAN.relative_to(ROOT)} --scenario {args.scenario}"
          f"{f' --speed {args.speed:g}' if args.speed else ''}; PREFECT_API_URL="
          f"{os.environ.get('PREFECT_API_URL') or '(unset: a temporary server)'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    firsts, totals = [], []
    for i in range(args.runs):
        r = one_run(args.scenario, args.speed)
        first = r["first_round_line"] if r["first_round_line"] is not None else r["first_round_report"]
        line = "-" if r["first_round_line"] is None else f"{r['first_round_line']:.1f}s"
        report = "-" if r["first_round_report"] is None else f"{r['first_round_report']:.1f}s"
        print(f"run {i + 1}: first gate round {line} (printed) / {report} (report); exit {r['exit']} after "
              f"{r['total']:.1f}s; load average {os.getloadavg()[0]:.1f}")
        if first is not None:
            firsts.append(float(first))
        totals.append(float(r["total"]))
    if not firsts:
        print("no gate round was reached")
        print(f"RESULT rehearse_first_round_s=inf goal={GOAL_FIRST_ROUND_S:g}")
        sys.exit(1)
    first_s, total_s = statistics.median(firsts), statistics.median(totals)
    print(f"rehearse_total_s={total_s:.1f} goal={GOAL_TOTAL_S:g} (median of {len(totals)})")
    print(f"RESULT rehearse_first_round_s={first_s:.1f} goal={GOAL_FIRST_ROUND_S:g}")


if __name__ == "__main__":
    main()
