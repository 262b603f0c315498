"""``phasegate rehearse PLAN --prove``: run every case of ``phasegate.prove`` and judge it.

Design decisions:

* Cases run concurrently in threads of one process, each in a loopback world of its own
  (cluster emulator, synthetic workload, Prometheus), against one Prefect API: worlds share
  nothing but the API, and the run context is a ContextVar, so each thread's rollout talks to
  its own world. Concurrency defaults to what two cores carry without stretching the wall
  floors a compressed clock relies on.
* Each case takes the target's lock under a name of its own (``lock_scope``, with a fresh
  token): the worlds are different clusters, and a killed earlier proof must not leave a
  slot held in Prefect's database that a later one waits for — the temporary server's
  leases live in memory and die with it, while its slot counts do not.
* A case whose fault the workload cannot express (the gate reads a metric no pod exports) is
  found before anything starts, by resolving its scenario against the plan: it is reported
  unprovable, and the proof does not match.
* The proof is recorded on the Prefect API in force (a markdown artifact keyed
  ``proof-<plan name>`` with the plan's SHA-256 in its metadata), where the checklist flow
  reads it. Against a temporary Prefect server that record dies with the process; the
  command says so.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from phasegate import prove
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import RolloutPlan, load_plan
from phasegate.rehearsal.scenarios import Fault, Scenario, ScenarioError, load_scenario
from phasegate.rehearsal.world import DISCOVERY_SECONDS, SCRAPE_SECONDS, prepare, world

# What the world's pacing waits before a phase's first round (World.run_context).
WARMUP_WALL = 4 * SCRAPE_SECONDS + DISCOVERY_SECONDS

DEFAULT_CONCURRENCY = 4
# Holds are answered by nobody; their pause ends at this floor (wall seconds) into the plan's
# on_timeout. Advances are answered at once by the rehearsal's approver.
APPROVAL_FLOOR = 8.0


def scenario_for(case: prove.Case) -> Scenario:
    fault = case.fault()
    if fault is None:
        return load_scenario("healthy")
    return Scenario(name=f"prove {case.id}", description=f"{case.kind} case of the proof",
                    faults=[Fault.model_validate(fault)])


def _null_notifier() -> ConsoleNotifier:
    return ConsoleNotifier(file=open("/dev/null", "w"))


def run_case(plan_path: str | Path, case: prove.Case, speed: float,
             workload_file: str | Path | None = None) -> prove.CaseResult:
    plan = load_plan(plan_path)
    soak_floor = None
    cycle = _cycle_wall(plan, case, speed)
    if case.phase is not None and cycle is not None:
        # On a compressed clock a phase's plan-time offsets are blinks: the fault starts two
        # rounds after the warm-up in wall time, and the soak lasts long enough after it for
        # 1.5 detection cycles and then some, or the case would test the floors, not the plan.
        interval = max(plan.phase(case.phase).trigger_every.total_seconds() / speed, SCRAPE_SECONDS)
        onset = WARMUP_WALL + 2 * interval
        case = replace(case, after_seconds=max(case.after_seconds, onset * speed))
        # The warm-up now ends as soon as the new pods are scraped (WARMUP_WALL at most), so
        # the soak floor counts the fault's whole offset, not only what follows the warm-up.
        soak_floor = onset + 3 * cycle
    scenario = scenario_for(case)
    try:
        prepare(plan, scenario)
    except ScenarioError as exc:
        return prove.unprovable(case, "; ".join(exc.problems))
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            with world(plan, scenario=scenario, speed=speed, notifier=_null_notifier(),
                       workload_file=workload_file) as w:
                report = run_in(w, plan_path, approve="auto", approval_floor=APPROVAL_FLOOR,
                                lock_scope=f"prove-{uuid.uuid4().hex[:8]}-{case.id.replace('/', '-')}",
                                soak_floor=soak_floor)
            break
        except Exception as exc:  # one broken case must not lose the others' results
            if attempt == 1 and _api_overloaded(exc):
                # The Prefect API, not the plan: a loaded SQLite server answers 503 now and then.
                continue
            result = prove.CaseResult(case, "error", wall_seconds=time.monotonic() - started)
            result.problem = f"{type(exc).__name__}: {exc}"[:300]
            return result
    return prove.judge(case, report, time.monotonic() - started, cycle_wall=cycle)


def _api_overloaded(exc: BaseException) -> bool:
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code >= 500


def _cycle_wall(plan: RolloutPlan, case: prove.Case, speed: float) -> float | None:
    """Scrape interval + gate interval of the case's phase, in wall seconds as rehearsed.

    A compressed clock floors the gate interval at a scrape and a ``{{window}}`` at four (rate()
    needs samples); at a plan's real cadence the window is the interval (its default), so the
    interval a detection waits on is the larger of the two floored figures."""
    if case.phase is None or case.gate is None:
        return None
    phase = plan.phase(case.phase)
    gate = next(g for g in phase.gates() if g.name == case.gate)
    interval = max(phase.trigger_every.total_seconds() / speed, SCRAPE_SECONDS)
    window = max((gate.window or phase.interval).total_seconds() / speed, 4 * SCRAPE_SECONDS)
    return SCRAPE_SECONDS + max(interval, window)


def run_proof(plan_path: str | Path, *, speed: float, concurrency: int = DEFAULT_CONCURRENCY,
              workload_file: str | Path | None = None,
              on_result: Callable[[prove.CaseResult], None] | None = None) -> prove.Proof:
    plan = load_plan(plan_path)
    cases = prove.plan_cases(plan)
    started = time.monotonic()
    lock = threading.Lock()

    def one(case: prove.Case) -> prove.CaseResult:
        result = run_case(plan_path, case, speed, workload_file)
        if on_result is not None:
            with lock:
                on_result(result)
        return result

    rehearsed = [c for c in cases if c.covered_by is None]
    _api_up()
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="prove") as pool:
        # Each case in a copy of this context: the Prefect settings in force reach its thread.
        futures = [pool.submit(contextvars.copy_context().run, one, c) for c in rehearsed]
        done = {c.id: f.result() for c, f in zip(rehearsed, futures, strict=True)}
    results = [done[c.id] if c.covered_by is None else prove.covered(c, done[c.covered_by]) for c in cases]
    return prove.Proof(str(plan_path), plan.name, prove.plan_digest(plan_path), results, speed,
                       time.monotonic() - started)


def _api_up() -> None:
    """Reach the Prefect API once before the cases start: without PREFECT_API_URL that starts
    Prefect's temporary server here, once, rather than in every case's thread at once."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def write_reports(proof: prove.Proof, path: str | Path) -> tuple[Path, Path]:
    """``--report PATH``: the JSON there, and the markdown beside it (``.md``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(proof.to_json(), indent=2))
    md = out.with_suffix(".md")
    md.write_text(proof.markdown())
    return out, md


def record(proof: prove.Proof) -> str | None:
    """Publish the proof on the Prefect API in force; its id, or None when it could not be."""
    from tasks.prefect_api import record_proof

    return record_proof(proof.plan_name, proof.markdown(), prove.proof_record(proof))


def summary(proof: prove.Proof) -> dict[str, Any]:
    return prove.proof_record(proof)
