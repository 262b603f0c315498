"""``phasegate rehearse PLAN --prove``: run every case of ``phasegate.prove`` and judge it.

Design decisions:

* Cases run concurrently in worker processes, each case in a loopback world of its own
  (cluster emulator, synthetic workload, Prometheus), against one Prefect API: worlds share
  nothing but the API. They ran in threads of one process at first; four worlds there shared
  one interpreter lock, their pods' /metrics answered late (slowest scrape 0.50 s, the
  scrape timeout; 3–8 % of scrapes failed) and gates read no data or detected late, so the
  proof measured the machine, not the plan. Each report now carries its world's scrape
  health (``monitoring``), and a mismatch in a degraded world says so.
  Concurrency defaults to what two cores carry without stretching the wall floors a
  compressed clock relies on.
* Each case takes the target's lock under a name of its own (``lock_scope``, with a fresh
  token): the worlds are different clusters, and a killed earlier proof must not leave a
  slot held in Prefect's database that a later one waits for — the temporary server's
  leases live in memory and die with it, while its slot counts do not.
* A case whose fault the workload cannot express (the gate reads a metric no pod exports) is
  found before anything starts, by resolving its scenario against the plan: it is reported
  unprovable, and the proof does not match.
* A phase's case starts at that phase (``rehearse.stage_before``): the earlier phases are
  left on the cluster as passed and approved, and the flow resumes from there as after a
  restart. Replaying them proved nothing their own cases do not, and cost most of the
  proof: a case of the seed's last phase took 113–131 s replayed. Only the healthy case
  runs every phase, and with it every approval and the promotion.
* The proof is recorded on the Prefect API in force (a markdown artifact keyed
  ``proof-<plan name>`` with the plan's SHA-256 in its metadata), where the checklist flow
  reads it. Against a temporary Prefect server that record dies with the process; the
  command says so.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
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

# A case waits on wall floors (Prometheus' 5 s discovery, soak and verify windows) far more than
# it computes: four worlds at a time left 55 % of two cores idle (vmstat, seed proof, 217 s).
# Three per core keep detection well inside its bound (seed, 6 at once: slowest 2.7 s of 3.75 s)
# at 158 s; a world starved of CPU says so in its report (``monitoring``).
DEFAULT_CONCURRENCY = 3 * (os.cpu_count() or 1)
# Advances are answered at once by the rehearsal's approver: their floor (wall seconds) is a
# ceiling for a Prefect API slow under load, never waited out when all is well. At 8 s, four
# worlds on a CI machine saw an approval time out before it was answered, into a halt.
APPROVAL_FLOOR = 30.0
# Holds are answered by nobody; their pause ends at this floor into the plan's on_timeout.
HOLD_FLOOR = 4.0


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
    first = plan.phases[0].name
    retried = ""
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            # Cold: Prometheus discovers the pods while the checklist runs and earlier phases are staged.
            with world(plan, scenario=scenario, speed=speed, notifier=_null_notifier(),
                       workload_file=workload_file, warm=False) as w:
                report = run_in(w, plan_path, approve="auto", approval_floor=APPROVAL_FLOOR, hold_floor=HOLD_FLOOR,
                                lock_scope=f"prove-{uuid.uuid4().hex[:8]}-{case.id.replace('/', '-')}",
                                soak_floor=soak_floor, start_at=case.phase if case.phase != first else None)
            break
        except Exception as exc:  # one broken case must not lose the others' results
            if attempt == 1 and _rig_failed(exc):
                # The rehearsal's rig, not the plan: a loaded SQLite server answers 503 now and
                # then, and the approver's answer to a pause can be lost with it. Once more, said.
                retried = f"retried after {type(exc).__name__}: {exc}"[:200]
                continue
            result = prove.CaseResult(case, "error", wall_seconds=time.monotonic() - started, note=retried)
            result.problem = f"{type(exc).__name__}: {exc}"[:300]
            return result
    judged = prove.judge(case, report, time.monotonic() - started, cycle_wall=cycle)
    judged.note = retried
    return judged


def _rig_failed(exc: BaseException) -> bool:
    from prefect.exceptions import FlowPauseTimeout, PrefectHTTPStatusError

    # Every pause of a proof's rehearsal that should end by an answer is answered at once by its
    # approver (holds end by their own timeout, inside the flow): one left unanswered is the rig's.
    return isinstance(exc, FlowPauseTimeout) or (
        isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code >= 500)


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
    rehearsed = [c for c in cases if c.covered_by is None]
    api = _api_up()
    # Spawned, not forked: this process holds Prefect's threads and clients, which a fork
    # would copy mid-flight.
    pool = ProcessPoolExecutor(max(1, min(concurrency, len(rehearsed))), mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(api,))
    done: dict[str, prove.CaseResult] = {}
    with pool:
        futures = {pool.submit(run_case, str(plan_path), c, speed, workload_file): c for c in rehearsed}
        for future in as_completed(futures):
            case = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # a worker that died (killed, out of memory) loses its case only
                result = prove.CaseResult(case, "error", problem=f"{type(exc).__name__}: {exc}"[:300])
            done[case.id] = result
            if on_result is not None:
                on_result(result)
    results = [done[c.id] if c.covered_by is None else prove.covered(c, done[c.covered_by]) for c in cases]
    return prove.Proof(str(plan_path), plan.name, prove.plan_digest(plan_path), results, speed,
                       time.monotonic() - started)


def _api_up() -> str:
    """Reach the Prefect API once before the cases start, and return its URL for the workers.

    Without PREFECT_API_URL that starts Prefect's temporary server here, once: a worker
    told its URL uses it rather than starting one of its own on the same database file."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        client.hello()
        return str(PREFECT_API_URL.value() or client.api_url).rstrip("/")


def _worker_init(api_url: str) -> None:
    """A case worker talks to the proof's Prefect API (settings made in the parent's context,
    such as a test harness's, do not cross a spawn)."""
    os.environ["PREFECT_API_URL"] = api_url


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
