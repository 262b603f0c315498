"""N concurrent rehearsed rollouts of distinct targets on one Prefect server (SQLite).

One emulator holds N targets (namespace team-i, Deployment svc-i), one synthetic app serves
them all, one Prometheus scrapes it, one Prefect API records every run. First a lone
rollout sets the baseline; then N run at once in threads of one flow process. Prints wall
time per rollout against the lone one, and the memory of the flow process and the Prefect
server.

    .venv/bin/python bench/scale.py [--n 20]

The Postgres-backed N = 100 run of the issue is not part of this script (see the note it prints).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = (ROOT / "tests/plans/two-phase.yaml").read_text()
SPEED = 172800.0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children.append(int(proc.name))
    return children + [d for c in children for d in descendants(c)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.rehearsal import (
        REHEARSAL_TRAFFIC,
        SCRAPE_SECONDS,
        Approver,
        CheckServer,
        World,
        default_image,
    )
    from flows.rollout import progressive_rollout
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.clock import ScaledClock
    from phasegate.plan import load_plan
    from phasegate.rehearsal.app import SyntheticApp
    from phasegate.rehearsal.cluster import ClusterEmulator, seed
    from phasegate.rehearsal.prometheus import PrometheusServer
    from phasegate.rehearsal.scenarios import load_scenario
    from tasks.runtime import using

    count = args.n + 1  # target 0 runs alone first
    folder = Path(tempfile.mkdtemp(prefix="phasegate-scale-"))
    paths = []
    for i in range(count):
        text = TEMPLATE.replace("name: two-phase", f"name: scale-{i}").replace(
            "deployment: bodhi-server", f"deployment: svc-{i}").replace("production: bodhi}", f"production: team-{i}}}")
        path = folder / f"scale-{i}.yaml"
        path.write_text(text)
        paths.append(path)
    plans = [load_plan(p) for p in paths]
    scenario = load_scenario("healthy")
    clock = ScaledClock(SPEED)
    image = default_image()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run

    with contextlib.ExitStack() as stack:
        stack.enter_context(prefect_test_harness(server_startup_timeout=60))
        stack.enter_context(temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        emulator = stack.enter_context(ClusterEmulator(ready_delay=0.05, time_scale=0.005))
        for i in range(count):
            seed(emulator, namespaces=(f"team-{i}",), deployment=f"svc-{i}", container="bodhi-server")
        worlds: list[World] = []
        app = SyntheticApp(lambda: [o for w in worlds for o in w.observe()], image, scenario, clock,
                           profile=REHEARSAL_TRAFFIC, tick_seconds=0.2)
        stack.enter_context(app)
        prometheus = PrometheusServer(targets=[app.target], scrape_interval=SCRAPE_SECONDS)
        stack.callback(prometheus.close)
        prometheus.start()
        checks = stack.enter_context(CheckServer())
        notifier = ConsoleNotifier(file=devnull)
        worlds.extend(World(p, image, scenario, clock, emulator, app, prometheus, notifier, checks) for p in plans)
        prometheus.wait_for_data("up", timeout=30)

        approver = Approver("auto")
        approver.patience = 600.0
        # Ten minutes to answer: under load the API is slow, and the bench measures slowness, not impatience.
        runtime = worlds[0].runtime(approval_floor=600.0, on_pause=approver)
        results: dict[int, tuple[str, float]] = {}

        def one(i: int) -> None:
            started = time.time()
            try:
                report = progressive_rollout(str(paths[i]), image, lock_timeout_seconds=120.0)
                outcome = report["outcome"]
                if outcome != "promoted":
                    why = (report.get("halted") or report.get("rollback") or {}).get("reason", "")
                    outcome = f"{outcome}: {why[:300]}"
            except Exception as exc:
                outcome = f"error: {type(exc).__name__}: {exc}"
            results[i] = (outcome, time.time() - started)

        with using(runtime):
            one(0)
            alone = results[0][1]
            print(f"one rollout alone: {alone:.1f}s ({results[0][0]})")
            threads = [threading.Thread(target=one, args=(i,)) for i in range(1, count)]
            started = time.time()
            for t in threads:
                t.start()
            peak_flow, peak_server = 0, 0
            while any(t.is_alive() for t in threads):
                peak_flow = max(peak_flow, rss_kib(os.getpid()))
                peak_server = max(peak_server, sum(rss_kib(p) for p in descendants(os.getpid())))
                time.sleep(0.5)
            total = time.time() - started

    walls = [results[i][1] for i in range(1, count)]
    outcomes = [results[i][0] for i in range(1, count)]
    ok = outcomes.count("promoted")
    # A rollout that halts or rolls back under load is a finding, not noise: print why.
    print(f"{args.n} at once: {ok}/{args.n} promoted in {total:.1f}s; per rollout median "
          f"{statistics.median(walls):.1f}s, max {max(walls):.1f}s")
    for i, o in enumerate(outcomes, start=1):
        if o != "promoted":
            print(f"  scale-{i}: {o}")
    print(f"peak RSS: flow process {peak_flow / 1024:.0f} MiB, servers and children {peak_server / 1024:.0f} MiB")
    print("not measured: N = 100 on a Postgres-backed server")
    ratio = max(walls) / alone if ok == args.n else float("nan")
    print(f"RESULT scale_overhead={ratio:.2f} goal=2")


if __name__ == "__main__":
    main()
