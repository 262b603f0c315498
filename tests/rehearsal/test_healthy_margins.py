"""A healthy rehearsal is never held by noise, at any speed a user picks.

The seed plan's own gates (its PromQL, its thresholds, ``gates.plan_round`` and
``gates.measure`` as the soak uses them) are read on a real Prometheus that scrapes the
synthetic app exactly as the rehearsal world does (``REHEARSAL_TRAFFIC``, 0.1 s ticks, a
0.5 s scrape), with each phase's pods as the world runs them: staging's two new pods against
their own pre-deploy reading, the 10 % canary's one pod against nine stable ones, 50 % as five
and five, and the full rollout's ten against the old ten.

A speed changes what the gates see through the rehearsal's pacing (``world.clamping_report``):
how much wall time a ``{{window}}`` holds and how often a round comes. For each speed, five
runs of rounds at that cadence and window, each on its own stretch of traffic with its own
pre-deploy reading, must pass every gate — and the noisy ones with margin: the p99 deltas
within half their tolerance, the ratio of refresh calls to expirations within half of its.
A soak of 577 rounds (48 h at 5 m) with ``failure_limit: 3`` is then not one unlucky round
from a hold.

Cheap: ~35 s of traffic for the whole module. Every round is evaluated afterwards with a
one-point range query at the round's instant, which Prometheus answers as it would have then.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from phasegate import gates
from phasegate.analysis import Outcome, Reading
from phasegate.clock import RealClock
from phasegate.durations import promql_duration
from phasegate.plan import GateKind, RolloutPlan, load_plan
from phasegate.rehearsal.app import NEW_IMAGE, OLD_IMAGE, SyntheticApp, TrackObservation, pods_of
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.rehearsal.world import REHEARSAL_TRAFFIC, SCRAPE_SECONDS, clamping_report, rehearsal_pacing

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"
DEPLOYMENT = "bodhi-server"
# Slow enough to watch in the UI (a 48 h soak in 29 min), the README's walkthrough, the default.
SPEEDS = (100.0, 3600.0, 28800.0)
RUNS = 5
RUN_SECONDS = 6.0  # a 48 h soak at 28800x; slower speeds are judged on as many rounds as fit
# Each phase as the world runs it: (stable pods on the old image, new-version pods). For
# staging and full the new version replaces the old one, compared with the old one's reading
# before the deploy: the "before" pods live in a namespace of their own.
SHAPES = {"staging": (2, 0), "canary-10pct": (9, 1), "canary-50pct": (5, 5), "full": (10, 0)}


@dataclass(frozen=True)
class Traffic:
    server: PrometheusServer
    start: float
    end: float


def _namespaces(phase: str) -> tuple[str, str]:
    return f"hm-{phase}", f"hm-{phase}-before"


@pytest.fixture(scope="module")
def traffic(prometheus_binary: str) -> Iterator[Traffic]:
    apps = []
    for n, (phase, (stable, canary)) in enumerate(SHAPES.items()):
        ns, before = _namespaces(phase)
        if canary:
            tracks = [TrackObservation(ns, DEPLOYMENT, "stable", OLD_IMAGE, stable, True, phase),
                      TrackObservation(ns, DEPLOYMENT, "canary", NEW_IMAGE, canary, True, phase)]
        else:  # the whole Deployment on the new version, and the old one as it ran before
            tracks = [TrackObservation(ns, DEPLOYMENT, "stable", NEW_IMAGE, stable, True, phase),
                      TrackObservation(before, DEPLOYMENT, "stable", OLD_IMAGE, stable, True, phase)]
        pods = pods_of(tracks)
        apps.append(SyntheticApp(lambda pods=pods: pods, NEW_IMAGE, None, RealClock(), profile=REHEARSAL_TRAFFIC,
                                 tick_seconds=0.1, seed=100 + n).start())
    server = PrometheusServer(scrape_interval=SCRAPE_SECONDS, binary=prometheus_binary)
    server.set_target_groups([g for app in apps for g in app.target_groups()])
    try:
        server.start()
        window = 4 * SCRAPE_SECONDS
        server.wait_for_data(f"min(count_over_time(api_response_time_ms_count[{window:g}s])) >= 4", timeout=60)
        # The first runs' pre-deploy readings and windows need a few seconds of data behind them.
        start = time.time() + max(w["wall"] for s in SPEEDS for c in report(s) for w in c["windows"])
        end = start + RUNS * RUN_SECONDS
        time.sleep(max(0.0, end - time.time()) + 2 * SCRAPE_SECONDS)
        yield Traffic(server, start, end)
    finally:
        server.close()
        for app in apps:
            app.stop()


def report(speed: float) -> list[dict]:
    return clamping_report(load_plan(SEED), speed, rehearsal_pacing())


def _margin_bound(gate_kind: GateKind, metric: str, threshold: float) -> float | None:
    """Where a healthy reading must stay, tighter than the plan's bound (None: the plan's)."""
    if gate_kind is GateKind.DELTA:
        return threshold / 2  # a p99 or error-rate delta: half the tolerated increase
    if metric == "refreshes_per_expiration":
        return 1 + (threshold - 1) / 2  # exactly 1 with the lock; half the tolerance above it
    return None


def _series(server: PrometheusServer, promql: str, start: float, end: float, step: float) -> dict[float, Reading]:
    """The query's value at every round's instant, in one range query (step in float seconds)."""
    params = urllib.parse.urlencode({"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
    with urllib.request.urlopen(f"{server.url}/api/v1/query_range?{params}", timeout=30) as r:
        result = json.loads(r.read())["data"]["result"]
    assert len(result) <= 1, f"{len(result)} series: {promql}"
    values = result[0]["values"] if result else []
    return {round(float(t), 3): Reading(float(v)) for t, v in values if math.isfinite(float(v))}


def _rounds(plan: RolloutPlan, phase_name: str, traffic: Traffic, speed: float, run: int) -> list[list]:
    """One run's rounds of ``phase_name`` at ``speed``: the measurements of each."""
    phase = plan.phase(phase_name)
    pacing = next(c for c in report(speed) if c["phase"] == phase_name)
    ns, before = _namespaces(phase_name)

    def to_promql(seconds: float) -> str:
        return promql_duration(max(seconds / speed, rehearsal_pacing().min_window_wall))

    run_start = traffic.start + run * RUN_SECONDS
    scope = gates.Scope(ns, DEPLOYMENT, phase.subject_track)
    pre_queries = gates.plan_pre_deploy(plan, phase, gates.Scope(before, DEPLOYMENT, "stable"), to_promql=to_promql)
    pre_deploy = {}
    for name, q in pre_queries.items():
        at = round(run_start, 3)
        pre_deploy[name] = gates.recorded_value(_series(traffic.server, q, at, at, 1.0).get(at, Reading()))
    planned = gates.plan_round(plan, phase.gates(), scope, phase=phase, to_promql=to_promql, pre_deploy=pre_deploy)
    step = pacing["interval_wall"]
    count = min(pacing["rounds"], int(RUN_SECONDS // step))
    first, last = run_start + step, run_start + count * step
    series = {q: _series(traffic.server, q, first, last, step) for q in gates.queries_of(planned)}
    out = []
    for i in range(count):
        at = round(first + i * step, 3)
        readings = {q: s.get(at, Reading()) for q, s in series.items()}
        out.append([gates.measure(q, readings, at=at) for q in planned])
    return out


@pytest.mark.parametrize("speed", SPEEDS, ids=lambda s: f"{s:g}x")
def test_healthy_model_passes_every_seed_gate_with_margin(traffic: Traffic, speed: float) -> None:
    plan = load_plan(SEED)
    gates_by_name = {g.name: g for p in plan.phases for g in p.gates()}
    problems = []
    rounds = 0
    for phase_name in SHAPES:
        for run in range(RUNS):
            for measurements in _rounds(plan, phase_name, traffic, speed, run):
                rounds += 1
                for m in measurements:
                    gate = gates_by_name[m.gate]
                    value = m.compared if m.compared is not None else m.value
                    if m.outcome is not Outcome.SUCCESSFUL:
                        problems.append(f"{phase_name} run {run + 1}: {m.gate} {m.outcome.value}: {m.message}")
                        continue
                    bound = _margin_bound(gate.kind, gate.metric, gate.threshold)
                    if bound is not None and value is not None and value > bound:
                        problems.append(f"{phase_name} run {run + 1}: {m.gate} read {value:.4g}, past half its "
                                        f"tolerance ({bound:g}; the plan's bound {m.bound})")
    assert rounds >= RUNS * len(SHAPES), rounds
    assert not problems, "\n".join(problems)


def test_clamping_is_reported_for_a_speed_that_compresses_the_interval() -> None:
    """At 3600x the seed's 5 m interval is 83 ms of wall time: clamped to one scrape, and said so."""
    seed = next(c for c in report(3600.0) if c["phase"] == "canary-50pct")
    assert seed["interval_clamped"] and seed["interval_wall"] == SCRAPE_SECONDS
    assert seed["interval_run"] == 1800.0 and seed["rounds"] == 97 and seed["plan_rounds"] == 577
    assert all(w["clamped"] and w["wall"] == 4 * SCRAPE_SECONDS for w in seed["windows"])
    slow = next(c for c in report(100.0) if c["phase"] == "canary-50pct")
    assert not slow["interval_clamped"] and slow["interval_wall"] == 3.0 and slow["rounds"] == 577
