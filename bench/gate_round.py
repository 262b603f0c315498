"""Benchmark: one concurrent round of the seed's gates vs its slowest single query.

Starts a real Prometheus scraping the synthetic app (stable on the old image, canary on
the new; in a child process, so its traffic ticks and scrapes do not compete for this
process' GIL as a real service would not), renders every gate in ``GATE_QUERIES`` for
both tracks, then, several times:
times each query alone (the slowest one is the floor a round can reach) and times the
whole set through ``measure.collect``. The ratio of the medians is the figure of merit:
about 1 means a round of N gates costs one query; N would mean they ran in turn.

    .venv/bin/python bench/gate_round.py [--repetitions 7]

Ends with exactly one line ``RESULT gate_round_ratio=<x> goal=2``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

from phasegate import measure
from phasegate.clock import RealClock
from phasegate.rehearsal.app import GATE_QUERIES, NEW_IMAGE, OLD_IMAGE, SyntheticApp, TrackObservation
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.rehearsal.scenarios import load_scenario
from phasegate.templates import render

GOAL = 2
NAMESPACE, DEPLOYMENT = "bench", "bodhi-server"


def _serve_app(conn: Connection) -> None:
    world = [
        TrackObservation(NAMESPACE, DEPLOYMENT, "stable", OLD_IMAGE, 9, True, "canary-10pct"),
        TrackObservation(NAMESPACE, DEPLOYMENT, "canary", NEW_IMAGE, 1, True, "canary-10pct"),
    ]
    app = SyntheticApp(lambda: world, NEW_IMAGE, load_scenario("healthy"), RealClock(), seed=1).start()
    conn.send(app.target)
    conn.recv()  # block until the parent says stop
    app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--window", default="1m", help="PromQL range for the gates")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    app = multiprocessing.get_context("spawn").Process(target=_serve_app, args=(child,), daemon=True)
    app.start()
    try:
        target = parent.recv()
        with PrometheusServer(targets=[target], scrape_interval=1.0) as server:
            started = time.monotonic()
            server.wait_for_data("min(count_over_time(http_requests_total[1m])) >= 5", timeout=60)
            print(f"prometheus {server.url} has data after {time.monotonic() - started:.1f}s")
            provider = server.provider()
            queries = {
                (name, track): render(t, {"namespace": NAMESPACE, "deployment": DEPLOYMENT, "track": track,
                                          "window": args.window})
                for name, t in GATE_QUERIES.items()
                for track in ("stable", "canary")
            }
            measure.collect(provider, queries)  # warm the connection pool and Prometheus' caches

            slowest, sequential, rounds = [], [], []
            for _ in range(args.repetitions):
                singles = [measure.sample(provider, q) for q in queries.values()]
                slowest.append(max(s.elapsed for s in singles))
                sequential.append(sum(s.elapsed for s in singles))
                t0 = time.perf_counter()
                samples = measure.collect(provider, queries)
                rounds.append(time.perf_counter() - t0)
                failed = {k: s.error for k, s in samples.items() if not s.ok}
                if failed:
                    raise SystemExit(f"gate queries failed: {failed}")
            provider.close()
    finally:
        parent.send("stop")
        app.join(timeout=10)
        if app.is_alive():
            app.terminate()

    slowest_median = statistics.median(slowest)
    round_median = statistics.median(rounds)
    ratio = round_median / slowest_median
    print(f"queries per round:          {len(queries)}")
    print(f"slowest single query:       median {slowest_median * 1000:.2f} ms  (runs: "
          + ", ".join(f"{s * 1000:.1f}" for s in slowest) + ")")
    print(f"same queries in turn:       median {statistics.median(sequential) * 1000:.2f} ms")
    print(f"concurrent round (collect): median {round_median * 1000:.2f} ms  (runs: "
          + ", ".join(f"{r * 1000:.1f}" for r in rounds) + ")")
    print(f"RESULT gate_round_ratio={ratio:.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
