"""``rehearse --prove``: which rehearsals prove a plan's safety net, and whether each did.

A proof is a set of cases, each a rehearsal with one fault (or none) and the outcome the plan
promises for it:

* **healthy**: no fault; the rollout must promote.
* **trigger** (one per trigger of every phase): a fault that breaks just that trigger, from a
  point in its phase after the first gate rounds; the rollout must roll back with that
  trigger's strategy, detect it within 1.5 × (scrape interval + gate interval) of onset, and
  the rollback must be verified.
* **criterion** (one per success criterion of every phase): a fault that breaks the criterion
  but no trigger; the rollout must hold (never promote).

Design decisions:

* A case names its fault in the plan's language (phase, gate, push: how far past the bound),
  never in a workload's vocabulary, so any plan gets a proof without writing scenarios. The
  workload turns it into an effect; where it cannot (the gate reads a metric no pod exports)
  the case is **unprovable**, reported and counted as not matched, never skipped.
* A criterion case pushes its gate past the bound by less than any trigger of the phase on the
  same metric and direction would need, when the bounds say by how much. Where a trigger is
  bound at or inside the criterion's bound (or both are ``zero``), breaking the criterion
  always fires the trigger, which rolls back — stronger than a hold: the criterion is
  **covered** by that trigger's case and matches when it does. No rehearsal is spent on it.
* Judging is a pure function of the case and the rehearsal's report, so a table test covers
  it; running the rehearsals is entry code (``phasegate.entry.prove``).
* The proof names the plan by the SHA-256 of its file, so a checklist can require a proof of
  exactly the plan it is about to roll out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from phasegate.plan import Gate, GateKind, Phase, RolloutPlan

Kind = Literal["healthy", "trigger", "criterion"]
Expect = Literal["promoted", "rolled_back", "held"]
DETECTION_FACTOR = 1.5
# A trigger fault lands this far past its bound (in multiples of the bound's distance from
# zero): clearly broken, so detection speed is the system's and not the fault's margin.
TRIGGER_PUSH = 2.0
CRITERION_PUSH = 2.0
SMALL_PUSH = 0.1
NEAR_PUSH = 1.5


@dataclass(frozen=True)
class Case:
    """One rehearsal of a proof: the fault (none for healthy) and what the plan promises."""

    id: str
    kind: Kind
    expect: Expect
    phase: str | None = None
    gate: str | None = None
    strategy: str | None = None
    push: float | None = None
    after_seconds: float = 0.0
    unprovable: str | None = None
    # A trigger of the phase that fires whenever this criterion breaks: its case proves this one.
    covered_by: str | None = None
    # The phase's triggers, which a criterion case must not fire...
    must_not_fire: tuple[str, ...] = ()
    # ...except one on the criterion's own metric: its firing says that, at the workload's
    # levels, this criterion cannot break without it (covered, found by rehearsing).
    same_metric: tuple[str, ...] = ()

    def fault(self) -> dict[str, Any] | None:
        """The scenario fault, in the plan's language."""
        if self.gate is None:
            return None
        return {"phase": self.phase, "gate": self.gate, "push": self.push, "after": f"{self.after_seconds:g}s"}


@dataclass
class CaseResult:
    case: Case
    actual: str  # promoted | rolled_back | halted | unprovable | error
    strategy: str | None = None
    fired: list[str] = field(default_factory=list)
    detected_after_wall: float | None = None
    detection_bound_wall: float | None = None
    detected_after_plan: float | None = None
    verified: bool | None = None
    wall_seconds: float = 0.0
    problem: str = ""
    # Onset → the rollback started (detection plus deciding and starting the rollback flow).
    rollback_after_wall: float | None = None
    # Why the case was rehearsed a second time (the rig failed the first), if it was.
    note: str = ""

    @property
    def matched(self) -> bool:
        return not self.problem

    def row(self) -> dict[str, Any]:
        c = self.case
        return {
            "case": c.id, "kind": c.kind, "phase": c.phase, "gate": c.gate, "expected": c.expect,
            "expected_strategy": c.strategy, "actual": self.actual, "strategy": self.strategy,
            "detected_after_wall_s": _round(self.detected_after_wall),
            "detection_bound_wall_s": _round(self.detection_bound_wall),
            "detected_after_plan_s": _round(self.detected_after_plan),
            "rollback_started_after_wall_s": _round(self.rollback_after_wall), "verified": self.verified,
            "wall_s": _round(self.wall_seconds), "matched": self.matched, "problem": self.problem,
            "note": self.note,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def plan_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fault_after(phase: Phase) -> float:
    """Plan seconds into the phase a fault starts: after the warm-up and two gate rounds, so the
    first rounds have seen the phase healthy and detection is measured from a known onset."""
    return phase.initial_delay.total_seconds() + 2 * phase.trigger_every.total_seconds()


def _direction(gate: Gate) -> int:
    """+1 when the gate fails high (value must stay below), -1 when it fails low, 0 unknown."""
    if gate.kind == GateKind.ZERO:
        return 1
    if gate.kind == GateKind.JUDGE:
        return 0
    return 1 if gate.op in ("<", "<=") else -1 if gate.op in (">", ">=") else 0


def _criterion_push(phase: Phase, gate: Gate) -> tuple[float, str | None]:
    """The push that breaks criterion ``gate`` but no trigger of the phase, and the trigger that
    covers the criterion when none can (breaking the criterion always fires it).

    A push is in multiples of the gate's bound (1 is at the bound): a trigger on the same
    metric, kind and direction bound further out leaves room between the two bounds, and the
    fault aims at its middle."""
    push = CRITERION_PUSH
    for trigger in phase.triggers:
        if trigger.metric != gate.metric:
            continue
        direction = _direction(gate)
        if gate.kind == GateKind.ZERO and trigger.kind == GateKind.ZERO:
            return push, trigger.name
        if trigger.kind == gate.kind and _direction(trigger) == direction != 0 and gate.threshold and \
                trigger.threshold:
            room = trigger.threshold / gate.threshold if direction > 0 else gate.threshold / trigger.threshold
            if room <= 1:
                return push, trigger.name
            push = min(push, (1 + room) / 2)
        else:
            # Another form of the same metric (a judge or delta beside a ratio): the bounds do
            # not say where the trigger fires, so break the criterion by little — a judge by a
            # small effect it still sees, a threshold just past its bound; the rehearsal tells.
            push = min(push, SMALL_PUSH if gate.kind == GateKind.JUDGE else NEAR_PUSH)
    return push, None


def plan_cases(plan: RolloutPlan) -> list[Case]:
    cases = [Case(id="healthy", kind="healthy", expect="promoted")]
    for phase in plan.phases:
        after = _fault_after(phase)
        for trigger in phase.triggers:
            cases.append(Case(id=f"{phase.name}/{trigger.name}", kind="trigger", expect="rolled_back",
                              phase=phase.name, gate=trigger.name, strategy=trigger.rollback.value,
                              push=TRIGGER_PUSH, after_seconds=after))
        for gate in phase.success:
            push, covering = _criterion_push(phase, gate)
            cases.append(Case(id=f"{phase.name}/{gate.name}", kind="criterion", expect="held", phase=phase.name,
                              gate=gate.name, push=push, after_seconds=after,
                              covered_by=f"{phase.name}/{covering}" if covering else None,
                              must_not_fire=tuple(t.name for t in phase.triggers),
                              same_metric=tuple(t.name for t in phase.triggers if t.metric == gate.metric)))
    return cases


def judge(case: Case, report: Mapping[str, Any], wall_seconds: float = 0.0,
          cycle_wall: float | None = None) -> CaseResult:
    """What the rehearsal did against what the case expects; ``problem`` says every mismatch.

    ``cycle_wall``: scrape interval + gate interval as the rehearsal ran them (wall seconds);
    default the report's own figure."""
    outcome = str(report.get("outcome"))
    rb = report.get("rollback") or {}
    timings = report.get("timings") or {}
    result = CaseResult(case, outcome, strategy=rb.get("strategy"), fired=list(rb.get("gates") or []),
                        wall_seconds=wall_seconds)
    problems: list[str] = []
    if case.expect == "promoted" and outcome != "promoted":
        problems.append(f"expected promoted, got {outcome}: {_why(report)}")
    elif case.expect == "held" and outcome == "promoted":
        problems.append("promoted although the criterion was broken")
    elif case.expect == "held" and result.fired and set(result.fired) <= set(case.same_metric):
        result.actual = f"covered by {', '.join(result.fired)}"
    elif case.expect == "held" and set(result.fired) & set(case.must_not_fire):
        problems.append(f"a trigger fired ({', '.join(sorted(set(result.fired) & set(case.must_not_fire)))}): "
                        "the fault broke more than the criterion")
    elif case.expect == "held" and not _failed_in(report, case.phase, case.gate):
        others = [g for g in _failed_gates(report, case.phase) if g not in case.must_not_fire]
        if others:
            # Held by another criterion the same fault broke first (lock timeouts are refresh
            # errors too: "zero authentication errors" fails on the first): the criteria held
            # the rollout, which is what the case asks; the table says which.
            result.actual = f"held by {', '.join(others)}"
        else:
            # Held, but by no criterion (no data, a slow approval): it proves nothing about it.
            problems.append(f"held, but {case.gate} never failed in {case.phase}: {_why(report)}")
    elif case.expect == "rolled_back":
        if outcome != "rolled_back":
            problems.append(f"expected a rollback, got {outcome}: {_why(report)}")
        else:
            if rb.get("phase") != case.phase:
                problems.append(f"rolled back in {rb.get('phase')}, not {case.phase}")
            if case.gate not in result.fired:
                problems.append(f"rolled back on {', '.join(result.fired) or rb.get('reason')}, not {case.gate}")
            if rb.get("strategy") != case.strategy:
                problems.append(f"rolled back by {rb.get('strategy')}, not {case.strategy}")
            result.verified = bool(rb.get("ok"))
            if not result.verified:
                problems.append("the rollback was not verified")
            detected, budget = _detected_after(case, report), cycle_wall or timings.get("budget")
            if detected is not None and budget is not None:
                result.detected_after_wall = float(detected)
                result.rollback_after_wall = timings.get("detected_after")
                result.detection_bound_wall = DETECTION_FACTOR * float(budget)
                # As rehearsed: the wall figure on the run's clock (its floors included).
                speed = report.get("speed")
                result.detected_after_plan = float(detected) * float(speed) if speed else None
                if result.detected_after_wall > result.detection_bound_wall:
                    problems.append(f"detected {result.detected_after_wall:.1f} s after onset, over "
                                    f"{result.detection_bound_wall:.1f} s")
            else:
                problems.append("no fault onset recorded: the fault never took effect")
    degraded = _degraded(report)
    if problems and degraded:
        problems.append(degraded)
    result.problem = "; ".join(problems)
    return result


def _failed_in(report: Mapping[str, Any], phase: str | None, gate: str | None) -> bool:
    """Some gate round of ``phase`` in the report read ``gate`` as Failed."""
    return any(m.get("gate") == gate and m.get("outcome") == "Failed"
               for p in report.get("phases") or [] if p.get("name") == phase
               for rnd in p.get("rounds") or [] for m in rnd)


def _failed_gates(report: Mapping[str, Any], phase: str | None) -> list[str]:
    """The gates that read Failed in some round of ``phase``, in the order they first did."""
    names: list[str] = []
    for p in report.get("phases") or []:
        if p.get("name") != phase:
            continue
        for rnd in p.get("rounds") or []:
            for m in rnd:
                if m.get("outcome") == "Failed" and m.get("gate") not in names:
                    names.append(str(m.get("gate")))
    return names


# More failed scrapes than this and the world, not the plan, is the likelier cause of a
# mismatch: a starved workload answers /metrics after the scrape timeout.
DEGRADED_SCRAPE_SHARE = 0.02


def _degraded(report: Mapping[str, Any]) -> str:
    health = report.get("monitoring") or {}
    # Scrapes that timed out, not those of deleted pods (which fail at once on any cluster).
    share = health.get("timed_out_share", health.get("failed_share"))
    if not isinstance(share, int | float) or share <= DEGRADED_SCRAPE_SHARE:
        return ""
    return (f"the rehearsal world was overloaded: {100 * share:.1f}% of scrapes timed out (slowest "
            f"{health.get('slowest_scrape_s')} s against a {health.get('scrape_timeout_s')} s timeout)")


def _detected_after(case: Case, report: Mapping[str, Any]) -> float | None:
    """Wall seconds from the fault's onset to the first round in which the case's gate read
    Failed: when the system knew, before deciding and starting the rollback."""
    timings = report.get("timings") or {}
    rb = report.get("rollback") or {}
    speed = report.get("speed")
    fallback = timings.get("detected_after")
    if "detected_after_plan" not in timings or "started_plan" not in rb or not speed:
        return None if fallback is None else float(fallback)
    onset_plan = float(rb["started_plan"]) - float(timings["detected_after_plan"])
    # The soak's rounds, then the rounds watched during the pause after it (a criterion that
    # failed first ends the soak in a hold, and the trigger is read on during the pause).
    readings = [(float(m.get("at", 0)), m.get("outcome"))
                for phase in report.get("phases") or [] if phase.get("name") == case.phase
                for rnd in phase.get("rounds") or [] for m in rnd if m.get("gate") == case.gate]
    readings += [(float(e.get("plan_time", 0)), (e.get("outcomes") or {}).get(case.gate))
                 for e in report.get("events") or []
                 if e.get("event") == "watch_round" and e.get("phase") == case.phase]
    failed = sorted(at for at, outcome in readings if outcome == "Failed" and at >= onset_plan)
    if failed:
        return (failed[0] - onset_plan) / float(speed)
    return None if fallback is None else float(fallback)


def unprovable(case: Case, why: str) -> CaseResult:
    return CaseResult(case, "unprovable", problem=f"unprovable: {why}")


def covered(case: Case, by: CaseResult) -> CaseResult:
    """A criterion no fault can break without firing ``by``'s trigger: proven by that case."""
    result = CaseResult(case, f"covered by {by.case.id}")
    if not by.matched:
        result.problem = f"its covering trigger case {by.case.id} did not match"
    return result


def _why(report: Mapping[str, Any]) -> str:
    phases = report.get("phases") or []
    last = phases[-1] if phases else {}
    return str(last.get("reason") or report.get("halted") or "")[:200]


@dataclass
class Proof:
    plan: str
    plan_name: str
    digest: str
    results: list[CaseResult]
    speed: float
    wall_seconds: float
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def matched(self) -> bool:
        return bool(self.results) and all(r.matched for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "plan_name": self.plan_name, "sha256": self.digest, "at": self.at,
                "speed": self.speed, "wall_s": round(self.wall_seconds, 1), "matched": self.matched,
                "cases": [r.row() for r in self.results]}

    def table(self) -> str:
        head = ("case", "expected", "actual", "detected", "verified", "match")
        rows = [head] + [(r.case.id, _expected(r.case), _actual(r), _detected(r),
                          "" if r.verified is None else ("yes" if r.verified else "no"),
                          "ok" if r.matched else "NO") for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines += [f"  {r.case.id}: {r.problem}" for r in self.results if r.problem]
        lines += [f"  {r.case.id} (matched): {r.note}" for r in self.results if r.note and not r.problem]
        return "\n".join(lines)

    def markdown(self) -> str:
        verdict = "every case matched" if self.matched else \
            f"{sum(not r.matched for r in self.results)} of {len(self.results)} cases did not match"
        lines = [f"# Proof of {self.plan_name}", "",
                 f"Plan `{self.plan}` (sha256 `{self.digest[:12]}`), {self.at}, at {self.speed:g}× — {verdict}.", "",
                 "| case | expected | actual | detected (wall) | verified | match |", "|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.case.id} | {_expected(r.case)} | {_actual(r)} | {_detected(r)} | "
                         f"{'' if r.verified is None else r.verified} | {'✅' if r.matched else '❌ ' + r.problem} |")
        return "\n".join(lines) + "\n"


def _expected(case: Case) -> str:
    return f"{case.expect} ({case.strategy})" if case.strategy else case.expect


def _actual(r: CaseResult) -> str:
    return f"{r.actual} ({r.strategy})" if r.strategy and r.actual == "rolled_back" else r.actual


def _detected(r: CaseResult) -> str:
    if r.detected_after_wall is None:
        return ""
    return f"{r.detected_after_wall:.1f}s <= {r.detection_bound_wall:.1f}s"


def proof_record(proof: Proof) -> dict[str, Any]:
    """What a checklist reads: which plan content was proven, when, and whether every case matched."""
    return {"plan_name": proof.plan_name, "sha256": proof.digest, "at": proof.at, "matched": proof.matched,
            "cases": len(proof.results), "failed": [r.case.id for r in proof.results if not r.matched]}


def parse_record(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) and "sha256" in data else None


def case_rows(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    return [asdict(r.case) | r.row() for r in results]
