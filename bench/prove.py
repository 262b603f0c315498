"""Benchmark: `phasegate rehearse PLAN --prove` on the seed plan and a second plan, against one
lone healthy rehearsal of each, all measured in this one run.

Prints, per plan: cases, cases matched, wall time of the whole proof, wall time per case, and
per case / one lone rehearsal (goal ≤ 0.5 when cases run together). Each command is a
subprocess as a user runs it, with its own temporary Prefect API.

    .venv/bin/python bench/prove.py [--concurrency 0] [--speed 28800]

Ends with exactly one line ``RESULT prove_seed_s=<seconds> goal=180``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANS = {"seed": ROOT / "deployments/plans/token-refresh-locking.yaml",
         "spring": ROOT / "tests/plans/orders-spring.yaml"}
GOAL_SEED_S = 180


def _run(args: list[str]) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "SLACK_", "PHASEGATE_"))}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "phasegate.entry.cli", "rehearse", *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    return time.monotonic() - started, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=0, help="0: the command's default, 3 per core")
    parser.add_argument("--speed", type=float, default=28800.0)
    ns = parser.parse_args()
    seed_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in PLANS.items():
            lone, code = _run([str(plan), "--speed", f"{ns.speed:g}"])
            print(f"{name}: one healthy rehearsal {lone:.1f} s (exit {code})")
            report = Path(tmp) / f"{name}.json"
            wall, code = _run([str(plan), "--prove", "--speed", f"{ns.speed:g}", "--concurrency",
                               str(ns.concurrency), "--report", str(report)])
            cases = json.loads(report.read_text())["cases"] if report.exists() else []
            matched = sum(c["matched"] for c in cases)
            rehearsed = sum(1 for c in cases if c["wall_s"])
            per_case = wall / max(rehearsed, 1)
            print(f"{name}: --prove {wall:.1f} s, exit {code}, {len(cases)} cases ({rehearsed} rehearsed), "
                  f"{matched} matched; {per_case:.1f} s per rehearsed case = {per_case / lone:.2f} x a lone rehearsal "
                  f"(goal <= 0.5)")
            for c in cases:
                if not c["matched"]:
                    print(f"  {c['case']}: {c['problem'][:160]}")
            if name == "seed":
                seed_s = wall
    print(f"RESULT prove_seed_s={seed_s:.0f} goal={GOAL_SEED_S}")


if __name__ == "__main__":
    main()
