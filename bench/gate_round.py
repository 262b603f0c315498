"""Benchmark: one concurrent round of the seed's gates vs its slowest single query.

Starts a real Prometheus scraping the synthetic app (stable on the old image, canary on
the new; in a child process, so its traffic ticks and scrapes do not compete for this
process' GIL as a real service would not), renders every gate in ``GATE_QUERIES`` for
both tracks, then, several times:
times each query alone (the slowest one is the floor a round can reach) and times the
whole set through ``measure.collect``. The ratio of the medians is the figure of merit:
about 1 means a round of N gates costs one query; N would mean they ran in turn.

The client CPU per query is printed too: it is the floor a round cannot go under, since
HTTP handling and JSON parsing hold the GIL (1.06 ms before the adapter sent instant
queries over the session's pool directly, 0.47 ms after, on the same machine).

Measured twice. On bare loopback Prometheus answers in ~0.1 ms and each query costs ~1 ms of
HTTP-client CPU under the GIL, so there is no waiting for threads to overlap and the round
costs what the queries cost in turn. No production Prometheus is 0.1 ms away, so the figure
of merit comes from the second run, with a 10 ms round trip added to every query (a sleep,
which like network I/O releases the GIL). Both are printed.

    .venv/bin/python bench/gate_round.py [--repetitions 7] [--rtt-ms 10]

Ends with exactly one line ``RESULT gate_round_ratio=<x> goal=2`` (the 10 ms run).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

from phasegate import gates, measure
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.clock import RealClock
from phasegate.ports import MetricsProvider
from phasegate.rehearsal.app import GATE_QUERIES, NEW_IMAGE, OLD_IMAGE, SyntheticApp, TrackObservation, pods_of
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.rehearsal.scenarios import load_scenario
from phasegate.templates import render

GOAL = 2
NAMESPACE, DEPLOYMENT = "bench", "bodhi-server"


class WithRoundTrip:
    """A provider whose every query first waits ``rtt`` seconds, as across a network."""

    def __init__(self, provider: PrometheusProvider, rtt: float) -> None:
        self.provider, self.rtt = provider, rtt

    def query(self, promql: str) -> float:
        time.sleep(self.rtt)
        return self.provider.query(promql)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        time.sleep(self.rtt)
        return self.provider.query_range(promql, start, end, step)

    def is_online(self) -> bool:
        return self.provider.is_online()


def measure_rounds(provider: MetricsProvider, queries: dict, repetitions: int) -> tuple[list, list, list]:
    measure.collect(provider, queries)  # warm the connection pool and Prometheus' caches
    slowest, sequential, rounds = [], [], []
    for _ in range(repetitions):
        singles = [measure.sample(provider, q) for q in queries.values()]
        slowest.append(max(s.elapsed for s in singles))
        sequential.append(sum(s.elapsed for s in singles))
        t0 = time.perf_counter()
        samples = measure.collect(provider, queries)
        rounds.append(time.perf_counter() - t0)
        failed = {k: s.error for k, s in samples.items() if not s.ok}
        if failed:
            raise SystemExit(f"gate queries failed: {failed}")
    return slowest, sequential, rounds


def client_cpu_per_query(provider: MetricsProvider, queries: list[str], repetitions: int = 10) -> float:
    """CPU seconds this process spends per query: the floor of a round, since parsing and
    HTTP handling hold the GIL while the waiting overlaps."""
    started = time.process_time()
    for _ in range(repetitions):
        for q in queries:
            measure.sample(provider, q)
    return (time.process_time() - started) / (repetitions * len(queries))


def report(title: str, count: int, slowest: list, sequential: list, rounds: list) -> float:
    slowest_median, round_median = statistics.median(slowest), statistics.median(rounds)
    print(title)
    print(f"  queries per round:          {count}")
    print(f"  slowest single query:       median {slowest_median * 1000:.2f} ms  (runs: "
          + ", ".join(f"{x * 1000:.1f}" for x in slowest) + ")")
    print(f"  same queries in turn:       median {statistics.median(sequential) * 1000:.2f} ms")
    print(f"  concurrent round (collect): median {round_median * 1000:.2f} ms  (runs: "
          + ", ".join(f"{r * 1000:.1f}" for r in rounds) + ")")
    print(f"  round / slowest query:      {round_median / slowest_median:.2f}")
    return round_median / slowest_median


def _serve_app(conn: Connection) -> None:
    world = [
        TrackObservation(NAMESPACE, DEPLOYMENT, "stable", OLD_IMAGE, 9, True, "canary-10pct"),
        TrackObservation(NAMESPACE, DEPLOYMENT, "canary", NEW_IMAGE, 1, True, "canary-10pct"),
    ]
    app = SyntheticApp(lambda: pods_of(world), NEW_IMAGE, load_scenario("healthy"), RealClock(), seed=1).start()
    conn.send(app.target_groups())
    conn.recv()  # block until the parent says stop
    app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--window", default="1m", help="PromQL range for the gates")
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="round trip added in the second run")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    app = multiprocessing.get_context("spawn").Process(target=_serve_app, args=(child,), daemon=True)
    app.start()
    try:
        groups = parent.recv()
        with PrometheusServer(scrape_interval=1.0) as server:
            server.set_target_groups(groups)
            started = time.monotonic()
            server.wait_for_data("min(count_over_time(api_response_time_ms_count[1m])) >= 5", timeout=60)
            print(f"prometheus {server.url} has data after {time.monotonic() - started:.1f}s")
            provider = server.provider()
            queries = {
                (name, track): render(t, gates.variables(None, gates.Scope(NAMESPACE, DEPLOYMENT, track), track,
                                                         args.window))
                for name, t in GATE_QUERIES.items()
                for track in ("stable", "canary")
            }
            cpu = client_cpu_per_query(provider, list(queries.values()))
            loopback = measure_rounds(provider, queries, args.repetitions)
            remote = measure_rounds(WithRoundTrip(provider, args.rtt_ms / 1000), queries, args.repetitions)
            provider.close()
    finally:
        parent.send("stop")
        app.join(timeout=10)
        if app.is_alive():
            app.terminate()

    print(f"client CPU per query (this process, queries in turn): {cpu * 1000:.2f} ms")
    report("bare loopback (client CPU bound):", len(queries), *loopback)
    ratio = report(f"with a {args.rtt_ms:g} ms round trip per query:", len(queries), *remote)
    print(f"RESULT gate_round_ratio={ratio:.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
