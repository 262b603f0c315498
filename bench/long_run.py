"""A week-long rollout of the seed plan, compressed: do parameters, memory and orchestration
CPU stay flat as the rounds pile up?

    .venv/bin/python bench/long_run.py [--speed 6000] [--plan deployments/plans/token-refresh-locking.yaml]

The real flows run against the rehearsal world (emulator, synthetic app, a real Prometheus)
on a Prefect API (``PREFECT_API_URL`` if set, else Prefect's test harness), with every
wall-time floor removed except the query window (rate() needs two scrapes): the plan's 5 min
interval and 1 min trigger cadence are honoured in plan time, so the number of rounds is
the plan's (577 full rounds per 48 h soak, four times as many trigger-only rounds).

Prints, every 100 rounds: the largest ``parameters`` of any flow run the server holds (as the
server stores them), the process RSS, and the orchestration CPU per round — process CPU
minus the world's own, measured idle for 10 s before the rollout starts (the world shares
this process). Ends with ``RESULT long_run_param_kib=<largest> goal=64``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def largest_parameters_kib() -> float:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return max((len(json.dumps(r.parameters, default=str)) for r in runs), default=0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", default=str(ROOT / "deployments/plans/token-refresh-locking.yaml"))
    parser.add_argument("--speed", type=float, default=6000.0, help="plan seconds per wall second")
    parser.add_argument("--every", type=int, default=100, help="print a line every this many rounds")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.checklist import pre_deployment_checklist
    from flows.rollout import run_rollout
    from phasegate import runctx
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.plan import load_plan
    from phasegate.rehearsal.world import Approver, world
    from phasegate.runctx import Pacing

    plan = load_plan(args.plan)
    harness = contextlib.nullcontext() if PREFECT_API_URL.value() else prefect_test_harness(server_startup_timeout=60)
    rounds = {"n": 0, "full": 0}
    lines: list[str] = []

    def on_event(event) -> None:
        if event.get("event") in ("round", "watch_round"):
            rounds["n"] += 1
            rounds["full"] += bool(event.get("full", False))

    with harness, temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
            world(plan, speed=args.speed, notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        approver = Approver("auto", say=lambda m: print(f"  {m}", flush=True))
        approver.patience = 120.0
        base = w.run_context(approval_floor=3.0, on_pause=approver, on_event=on_event)
        ctx = base.with_(pacing=Pacing(min_window_wall=base.pacing.min_window_wall, min_approval_wall=3.0,
                                       approval_poll_seconds=1))
        idle_from, idle_cpu = time.time(), cpu()
        time.sleep(10)
        world_rate = (cpu() - idle_cpu) / (time.time() - idle_from)
        print(f"plan {plan.name} at {args.speed:g}x; world alone: {world_rate * 1000:.0f} ms CPU per wall s")
        print(f"{'rounds':>7} {'full':>5} {'param KiB':>10} {'RSS MiB':>8} {'orch ms/round':>14}")
        done = threading.Event()
        result: dict = {}

        def drive() -> None:
            try:
                with runctx.use(ctx):
                    if plan.checklist is not None and plan.checklist.required and plan.checklist.items:
                        pre_deployment_checklist(args.plan, image=w.image, timeout_seconds=60, poll_interval_seconds=1)
                    result.update(run_rollout(args.plan, w.image, lock_timeout_seconds=60.0))
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                done.set()

        started = time.time()
        threading.Thread(target=drive, daemon=True).start()
        last_rounds, last_cpu, last_wall, next_line = 0, cpu(), time.time(), args.every
        samples: list[tuple[int, float, float, float]] = []
        while not done.wait(0.5):
            if rounds["n"] >= next_line:
                now_cpu, now_wall = cpu(), time.time()
                per_round = (now_cpu - last_cpu - world_rate * (now_wall - last_wall)) / max(
                    rounds["n"] - last_rounds, 1)
                sample = (rounds["n"], largest_parameters_kib(), rss_mib(), per_round * 1000)
                samples.append(sample)
                lines.append(f"{sample[0]:>7} {rounds['full']:>5} {sample[1]:>10.1f} {sample[2]:>8.0f} "
                             f"{sample[3]:>14.1f}")
                print(lines[-1], flush=True)
                last_rounds, last_cpu, last_wall = rounds["n"], cpu(), time.time()
                next_line = (rounds["n"] // args.every + 1) * args.every
        largest = largest_parameters_kib()
        print(f"outcome: {result.get('outcome', result.get('error'))} after {time.time() - started:.0f} s wall, "
              f"{rounds['n']} rounds ({rounds['full']} judging every gate)")
        for phase in result.get("phases", []):
            print(f"  {phase['name']}: {phase['outcome']} after {len(phase['rounds'])} rounds: {phase['reason'][:200]}")
        if len(samples) >= 2:
            first, last = samples[0], samples[-1]
            growth = (last[2] - first[2]) / first[2]
            cpu_ms = sorted(s[3] for s in samples)[len(samples) // 2]
            print(f"RSS round {first[0]} -> {last[0]}: {first[2]:.0f} -> {last[2]:.0f} MiB "
                  f"({growth:+.1%}, goal <= +10%)")
            print(f"orchestration CPU per round, median of samples: {cpu_ms:.1f} ms (goal <= 20)")
            print(f"largest flow-run parameters: {largest:.1f} KiB (goal <= 64, flat in the number of rounds)")
    print(f"RESULT long_run_param_kib={largest:.1f} goal=64")


if __name__ == "__main__":
    main()
