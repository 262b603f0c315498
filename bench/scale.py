"""N concurrent rehearsed rollouts of distinct targets on one Prefect server, SQLite or Postgres.

    .venv/bin/python bench/scale.py [--n 20] [--db sqlite|postgres] [--soak-wall 20] [--interval-wall 2]

What runs where, as in production:
- a real ``prefect server start`` (API + services) on loopback, its database either SQLite
  in its home or a throwaway PostgreSQL (Debian ``postgresql``, started on loopback here);
- the world — the Kubernetes API emulator with N targets (namespace team-i, Deployment
  svc-i), the synthetic app serving all of them, the check server — in a child process,
  as a cluster lives outside the worker; a real Prometheus scrapes the app;
- the rollouts, as threads of this (the flow) process, each one progressive_rollout of the
  two-phase plan, approved through the Prefect API by a rehearsal approver.

First one rollout runs alone (the baseline), then N at once. The plan's 48 h and 24 h soaks
run ``--soak-wall`` seconds each, with a gate round every ``--interval-wall`` seconds over a
window of four rounds: a rollout spends most of its life waiting, as a real one does, and
the bench measures what orchestration adds to that when N share one server. (At full
rehearsal speed a rollout is nothing but orchestration, and the figure would measure the
CPU count of the machine.)

Prints per-rollout wall time against the lone one, CPU seconds per rollout by process
(flow process, Prefect server, database, world), and peak memory. Ends with
``RESULT scale_overhead=<max wall at N / lone wall> goal=2`` — ``nan`` when any rollout did not
promote, since a wrong outcome under load is a failure, not a slow success.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEMPLATE = (ROOT / "tests/plans/two-phase.yaml").read_text()
SPEED = 172800.0  # plan time runs 2 days per second; the walls below set the pace


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pid: int) -> float:
    # Children that exited are counted in their parent's cutime/cstime only after wait();
    # the servers here keep their workers, so live descendants are the whole account.
    return sum(cpu_seconds(p) for p in tree(pid)) if pid else 0.0


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in tree(pid)) if pid else 0


def plan_paths(count: int) -> list[Path]:
    folder = Path(tempfile.mkdtemp(prefix="phasegate-scale-"))
    paths = []
    for i in range(count):
        text = TEMPLATE.replace("name: two-phase", f"name: scale-{i}").replace(
            "deployment: bodhi-server", f"deployment: svc-{i}").replace("production: bodhi}", f"production: team-{i}}}")
        path = folder / f"scale-{i}.yaml"
        path.write_text(text)
        paths.append(path)
    return paths


def host_world(paths: list[Path], scrape_wall: float) -> None:
    """The child process: the cluster, the app and Prometheus for every target, until stdin closes."""
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.clock import ScaledClock
    from phasegate.plan import load_plan
    from phasegate.rehearsal.app import SyntheticApp
    from phasegate.rehearsal.cluster import ClusterEmulator, seed
    from phasegate.rehearsal.prometheus import PrometheusServer
    from phasegate.rehearsal.scenarios import load_scenario
    from phasegate.rehearsal.world import REHEARSAL_TRAFFIC, SCRAPE_SECONDS, CheckServer, World, default_image

    plans = [load_plan(p) for p in paths]
    scenario = load_scenario("healthy")
    clock = ScaledClock(SPEED)
    image = default_image()
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(ClusterEmulator(ready_delay=0.05, time_scale=0.005))
        for i, _ in enumerate(plans):
            seed(emulator, namespaces=(f"team-{i}",), deployment=f"svc-{i}", container="bodhi-server")
        worlds: list[World] = []
        # The exposition of a hundred targets' pods takes the better part of a second of a
        # busy process: scraped every second it timed out and gates saw no data. Half a gate
        # interval still puts eight samples in a window of four rounds.
        prometheus = PrometheusServer(scrape_interval=max(SCRAPE_SECONDS, scrape_wall))
        stack.callback(prometheus.close)
        app = SyntheticApp(lambda: [o for w in worlds for o in w.observe()], image, scenario, clock,
                           profile=REHEARSAL_TRAFFIC, tick_seconds=0.5, on_targets=prometheus.set_target_groups)
        stack.enter_context(app)
        prometheus.start()
        checks = stack.enter_context(CheckServer())
        notifier = ConsoleNotifier(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the world
        worlds.extend(World(p, image, scenario, clock, emulator, app, prometheus, notifier, checks) for p in plans)
        prometheus.wait_for_data("count(up == 1)", timeout=30)
        print(json.dumps({"emulator": emulator.url, "prometheus": prometheus.url, "checks_port": checks.port,
                          "epoch": clock.epoch, "image": image, "prometheus_pid": prometheus.pid}), flush=True)
        sys.stdin.read()  # the bench closes our stdin when it is done
        import collections
        import re

        calls = collections.Counter(
            f"{r.method} {re.sub(r'/namespaces/[^/]+', '/namespaces/*', re.sub(r'svc-[0-9]+', 'svc-*', r.path))}"
            for r in emulator.requests)
        print(f"Kubernetes API requests per rollout: {sum(calls.values()) / len(plans):.0f}; most frequent: "
              + ", ".join(f"{k} {v / len(plans):.0f}" for k, v in calls.most_common(4)), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--soak-wall", type=float, default=20.0, help="seconds each phase soaks")
    parser.add_argument("--interval-wall", type=float, default=2.0, help="seconds between gate rounds")
    parser.add_argument("--approval-wall", type=float, default=600.0, help="seconds an approval may take")
    parser.add_argument("--host-world", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scrape_wall = args.interval_wall / 2
    if args.host_world is not None:
        host_world([Path(p) for p in args.host_world], scrape_wall)
        return

    from phasegate.rehearsal.prefect_server import PrefectServer, server_env

    # The servers run in their own sessions so that stopping them reaches their workers; a
    # SIGTERM to the bench must unwind the ExitStack below, or they outlive it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    count = args.n + 1  # target 0 runs alone first
    paths = plan_paths(count)
    with contextlib.ExitStack() as stack:
        database_url, db_pid = None, 0
        if args.db == "postgres":
            sys.path.insert(0, str(Path(__file__).parent))
            from postgres import PostgresServer

            pg = stack.enter_context(PostgresServer())
            database_url, db_pid = pg.url, pg.pid
        server = stack.enter_context(PrefectServer(Path(tempfile.mkdtemp(prefix="phasegate-scale-prefect-")),
                                                   database_url=database_url))
        # Settings are read when Prefect is imported: point this process at the server first.
        os.environ.update(server_env(server.url, server.home, database_url))
        os.environ.update({"PREFECT_LOGGING_LEVEL": "ERROR"})

        world_proc = subprocess.Popen(
            [sys.executable, __file__, "--interval-wall", str(args.interval_wall), "--host-world", *map(str, paths)],
            cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        stack.callback(lambda: (world_proc.stdin.close() if world_proc.stdin else None, world_proc.wait(30)))
        line = world_proc.stdout.readline() if world_proc.stdout else ""
        if not line:
            raise SystemExit("the world process did not start")
        world = json.loads(line)
        run(args, paths, world, server.pid, db_pid, world_proc.pid)


def run(args: argparse.Namespace, paths: list[Path], world: dict, server_pid: int, db_pid: int,
        world_pid: int) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.rollout import run_rollout
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.adapters.kubernetes import KubernetesCluster
    from phasegate.adapters.prometheus import PrometheusProvider
    from phasegate.clock import ScaledClock
    from phasegate.rehearsal.world import Approver, _loopback
    from phasegate.runctx import Pacing, RunContext, use

    approver = Approver("auto", say=lambda m: print(f"  {m}", flush=True))
    approver.patience = args.approval_wall
    approver.poll_seconds = 1.0
    port = world["checks_port"]
    interval = args.interval_wall
    ctx = RunContext(
        cluster=KubernetesCluster.from_url(world["emulator"], poll_interval=0.2, backoff=0.1, max_backoff=1.0),
        metrics=PrometheusProvider(world["prometheus"], timeout=10.0, max_connections=64),
        notifier=ConsoleNotifier(file=open(os.devnull, "w")),  # noqa: SIM115 - for the whole run
        clock=ScaledClock(SPEED, epoch=world["epoch"]),
        pacing=Pacing(
            min_interval_wall=interval,
            min_window_wall=4 * interval,
            min_warmup_wall=2 * interval,
            min_soak_wall=args.soak_wall,
            min_approval_wall=args.approval_wall,
            approval_poll_seconds=1,
        ),
        url_for_check=lambda url: _loopback(url, port),
        on_pause=approver,
    )
    results: dict[int, tuple[str, float]] = {}

    def one(i: int) -> None:
        started = time.time()
        try:
            report = run_rollout(str(paths[i]), world["image"], lock_timeout_seconds=120.0)
            outcome = report["outcome"]
            if outcome != "promoted":
                phases = [(p["name"], p["outcome"], p["reason"][:160]) for p in report["phases"]]
                outcome = f"{outcome}: phases={phases}"
        except Exception as exc:
            outcome = f"error: {type(exc).__name__}: {exc}"
        results[i] = (outcome, time.time() - started)

    procs = {"flow process": os.getpid(), "prefect server": server_pid, "database": db_pid,
             "world (emulator, app)": world_pid, "prometheus": world["prometheus_pid"]}

    def cpu() -> dict[str, float]:
        out = {name: tree_cpu(pid) for name, pid in procs.items() if name != "flow process"}
        # The server tree holds the flow process' other children too when SQLite is used; none here.
        out["flow process"] = sum(os.times()[:2])
        if procs["database"] == 0:
            out.pop("database")
        return out

    def spent(before: dict[str, float], after: dict[str, float], n: int) -> str:
        return ", ".join(f"{k} {(after[k] - before[k]) / n:.1f}" for k in after)

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), use(ctx):
        c0 = cpu()
        one(0)
        c1 = cpu()
        alone = results[0][1]
        print(f"database: {args.db}; soak {args.soak_wall:.0f} s per phase, a gate round every {interval:.0f} s"
              f" over {4 * interval:.0f} s, Prometheus scraping every {interval / 2:.1f} s")
        print(f"one rollout alone: {alone:.1f}s ({results[0][0]})")
        print(f"  CPU s per rollout: {spent(c0, c1, 1)}")
        # Each thread gets a copy of this one's run context: a new thread starts with none.
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, i), daemon=True)
                   for i in range(1, len(paths))]
        rss0 = rss_kib(os.getpid())
        started = time.time()
        for t in threads:
            t.start()
        peak = dict.fromkeys(procs, 0)
        while any(t.is_alive() for t in threads):
            for name, pid in procs.items():
                peak[name] = max(peak[name], rss_kib(pid) if name == "flow process" else tree_rss_kib(pid))
            time.sleep(0.5)
        total = time.time() - started
        c2 = cpu()

    n = args.n
    walls = [results[i][1] for i in range(1, n + 1)]
    outcomes = [results[i][0] for i in range(1, n + 1)]
    ok = outcomes.count("promoted")
    # A rollout that halts or rolls back under load is a finding, not noise: print why.
    print(f"{n} at once: {ok}/{n} promoted in {total:.1f}s; per rollout median {statistics.median(walls):.1f}s "
          f"({statistics.median(walls) / alone:.2f}x alone), max {max(walls):.1f}s ({max(walls) / alone:.2f}x)")
    print(f"  CPU s per rollout: {spent(c1, c2, n)}")
    for i, o in enumerate(outcomes, start=1):
        if o != "promoted":
            print(f"  scale-{i}: {o}")
    print("peak RSS: " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in peak.items() if procs[k]))
    print(f"flow process memory per concurrent rollout: {(peak['flow process'] - rss0) / 1024 / n:.1f} MiB")
    ratio = max(walls) / alone if ok == n else float("nan")
    print(f"RESULT scale_overhead={ratio:.2f} goal=2")


if __name__ == "__main__":
    main()
