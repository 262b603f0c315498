"""``phasegate rehearse PLAN --prove``: run every case of ``phasegate.prove`` and judge it.

Design decisions:

* Cases run concurrently in threads of one process, each in a loopback world of its own
  (cluster emulator, synthetic workload, Prometheus), against one Prefect API: worlds share
  nothing but the API, and the run context is a ContextVar, so each thread's rollout talks to
  its own world. Concurrency defaults to what two cores carry without stretching the wall
  floors a compressed clock relies on.
* A case whose fault the workload cannot express (the gate reads a metric no pod exports) is
  found before anything starts, by resolving its scenario against the plan: it is reported
  unprovable, and the proof does not match.
* The proof is recorded on the Prefect API in force (a markdown artifact keyed
  ``proof-<plan name>`` with the plan's SHA-256 in its metadata), where the checklist flow
  reads it. Against a temporary Prefect server that record dies with the process; the
  command says so.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from phasegate import prove
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.scenarios import Fault, Scenario, ScenarioError, load_scenario
from phasegate.rehearsal.world import prepare, world

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


def run_case(plan_path: str | Path, case: prove.Case, speed: float) -> prove.CaseResult:
    plan = load_plan(plan_path)
    scenario = scenario_for(case)
    try:
        prepare(plan, scenario)
    except ScenarioError as exc:
        return prove.unprovable(case, "; ".join(exc.problems))
    started = time.monotonic()
    try:
        with world(plan, scenario=scenario, speed=speed, notifier=_null_notifier()) as w:
            report = run_in(w, plan_path, approve="auto", approval_floor=APPROVAL_FLOOR)
    except Exception as exc:  # one broken case must not lose the others' results
        result = prove.CaseResult(case, "error", wall_seconds=time.monotonic() - started)
        result.problem = f"{type(exc).__name__}: {exc}"[:300]
        return result
    return prove.judge(case, report, time.monotonic() - started)


def run_proof(plan_path: str | Path, *, speed: float, concurrency: int = DEFAULT_CONCURRENCY,
              on_result: Callable[[prove.CaseResult], None] | None = None) -> prove.Proof:
    plan = load_plan(plan_path)
    cases = prove.plan_cases(plan)
    started = time.monotonic()
    lock = threading.Lock()

    def one(case: prove.Case) -> prove.CaseResult:
        result = run_case(plan_path, case, speed)
        if on_result is not None:
            with lock:
                on_result(result)
        return result

    rehearsed = [c for c in cases if c.covered_by is None]
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="prove") as pool:
        done = dict(zip([c.id for c in rehearsed], pool.map(one, rehearsed), strict=True))
    results = [done[c.id] if c.covered_by is None else prove.covered(c, done[c.covered_by]) for c in cases]
    return prove.Proof(str(plan_path), plan.name, prove.plan_digest(plan_path), results, speed,
                       time.monotonic() - started)


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
