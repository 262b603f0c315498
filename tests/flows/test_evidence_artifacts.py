"""Evidence that reads at 2,000 rounds (issue 18): one gates table per phase, updated in place,
newest round first with the rounds that did not pass kept and marked; a per-rollout summary
naming every gate; short keys.

The table's bookkeeping is checked on its own at a real soak's scale (577 rounds, no server);
then a real rehearsed rollout that rolls back runs on the real Prefect API, and what a person
would open in the UI is read back through the Prefect client.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.analysis import Measurement, Outcome
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.scenarios import parse_scenario
from phasegate.rehearsal.world import world
from tasks import evidence

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
KEY = re.compile(r"^[a-z0-9-]+$")
# The canary passes (many rounds into one table), `full` rolls back at its first round.
FAULT_IN_FULL = """
name: token-not-active-in-full
faults:
  - {phase: full, after: 0m, token_not_active_per_s: 2.0}
"""


def round_of(*outcomes: Outcome) -> list[Measurement]:
    return [Measurement(gate=f"gate-{i}", outcome=o, at=0.0, value=float(i), compared=float(i), bound="value < 9",
                        message="" if o is Outcome.SUCCESSFUL else "breaks the bound")
            for i, o in enumerate(outcomes)]


def test_a_577_round_phase_keeps_a_small_table_newest_first_with_its_failed_round():
    table = evidence.PhaseGates("two-phase:registry.example.com/bodhi-server:v2", "canary-10pct",
                                  {"gate-0": "value < 9", "gate-1": "value < 9"})
    for n in range(1, 578):
        table.add(n, round_of(Outcome.SUCCESSFUL, Outcome.FAILED if n == 10 else Outcome.SUCCESSFUL), 300.0 * n)
    rows = table.table()
    assert len(rows) == evidence.RECENT_ROUNDS + 1
    numbers = [int(r["round"]) for r in rows]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] == 577
    failed = next(r for r in rows if r["round"] == "10")
    assert failed["result"] == "✗ Failed" and failed["gate-1"].startswith("✗ 1")
    assert rows[0]["result"] == "✓ Successful" and rows[0]["soak"] == "48h05m"
    assert "577 gate rounds, 1 not passing" in table.description()
    assert table.description().endswith("Bounds — gate-0: value < 9; gate-1: value < 9")


def test_not_passing_rounds_are_capped_too():
    table = evidence.PhaseGates("p:img:v1", "full")
    for n in range(1, 2001):
        table.add(n, round_of(Outcome.INCONCLUSIVE), 60.0 * n)
    assert len(table.table()) == evidence.KEPT_NOT_PASSING
    assert table.table()[0]["result"] == "? Inconclusive"


def test_only_a_worse_round_is_news_to_send_at_once():
    table = evidence.PhaseGates("p:img:v1", "full")
    news = [table.add(n, round_of(o), 0.0) for n, o in enumerate(
        [Outcome.SUCCESSFUL, Outcome.INCONCLUSIVE, Outcome.ERROR, Outcome.ERROR, Outcome.FAILED,
         Outcome.SUCCESSFUL], 1)]
    assert news == [False, False, True, False, True, False]


@pytest.mark.parametrize(("rollout", "phase", "expected"), [
    ("two-phase:registry.example.com/bodhi-server:v2.0.0", "canary-10pct", "bodhi-server-v2-0-0-canary-10pct-gates"),
    ("p:bodhi-server@sha256:" + "ab" * 32, "full", None),
    ("p:" + "x" * 120 + ":v1", "full", None),
])
def test_keys_are_short_and_what_prefect_accepts(rollout, phase, expected):
    key = evidence._key(rollout, phase, "gates")
    assert KEY.match(key) and len(key) <= 64, key
    if expected:
        assert key == expected
    # Two rollouts whose names were shortened still get keys of their own.
    assert evidence._key(rollout + "2", phase, "gates") != key


def test_sparkline_marks_the_bound_and_shows_a_breach_above_it():
    line = evidence.sparkline([0.0] * 30 + [2.0] * 10, threshold=1.0)
    assert line.startswith("▁") and "█" in line and line.endswith("bound at ▅")


def test_the_chart_is_one_html_block_with_the_bound_dashed_and_failed_rounds_red():
    series = [Measurement("error-rate-increase", Outcome.FAILED if i == 7 else Outcome.SUCCESSFUL, 0.0,
                          value=0.1, compared=0.5 if i == 7 else 0.1) for i in range(10)]
    svg = evidence.svg_chart([("error-rate-increase", series, 0.3), ("lock-success", series[:3], None)])
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "\n\n" not in svg  # Markdown keeps it whole
    assert svg.count("<polyline") == 2 and svg.count("stroke-dasharray") == 1
    assert svg.count(f'fill="{evidence.BAD}"') == 1 and ">error-rate-increase</text>" in svg


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_publish_is_swallowed_and_backs_off_but_the_phases_last_round_is_still_tried(
    caplog: pytest.LogCaptureFixture,
):
    from prefect import flow

    @flow
    def phase() -> tuple[bool, bool, bool]:
        table = evidence.PhaseGates("p:bodhi-server:v1", "full")
        table.artifact_id = uuid4()  # one the API does not have: the update is refused
        table.add(1, round_of(Outcome.SUCCESSFUL), 0.0)
        first = table.publish()
        table.add(2, round_of(Outcome.FAILED), 300.0)
        backing_off = table.publish(urgent=True)
        table.artifact_id = None
        return first, backing_off, table.publish(final=True)

    assert phase() == (False, False, True)
    assert "could not publish the full gate table" in caplog.text


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_rehearsed_rollback_leaves_one_gates_table_per_phase_and_a_summary_of_every_gate():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    plan = load_plan(TWO_PHASE)
    with world(plan, scenario=parse_scenario(FAULT_IN_FULL, source="test"), speed=28800.0,
               notifier=ConsoleNotifier(file=open(os.devnull, "w"))) as w:
        report = run_in(w, TWO_PHASE)
    assert report["outcome"] == "rolled_back"
    canary, full = report["phases"]
    with get_client(sync_client=True) as client:
        parent = UUID(report["flow_run_id"])
        phases = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        ours = {parent, *(r.id for r in phases)}
        # Filtered on the server: the session's API holds every earlier test's artifacts, and a
        # first page of all of them need not reach this rollout's.
        artifacts = [a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ours))),
                                                      limit=200) if a.flow_run_id in ours]
    keys = [a.key for a in artifacts if a.key]
    assert all(KEY.match(k) and len(k) <= 64 for k in keys), keys

    gates = {a.key: json.loads(str(a.data)) for a in artifacts if a.type == "table" and a.key.endswith("-gates")}
    assert sorted(gates) == sorted(evidence._key(report["rollout"], p, "gates") for p in ("canary-10pct", "full"))
    for phase in (canary, full):
        rows = gates[evidence._key(report["rollout"], phase["name"], "gates")]
        numbers = [int(r["round"]) for r in rows]
        assert numbers == sorted(numbers, reverse=True)
        assert numbers[0] == len(phase["rounds"])  # the round that ended the phase is on top
    canary_rows = gates[evidence._key(report["rollout"], "canary-10pct", "gates")]
    canary_full = sum(1 for e in report["events"] if e["event"] == "round" and e["full"] and e["phase"] == "canary-10pct")
    assert len(canary_rows) >= min(canary_full, evidence.RECENT_ROUNDS) >= 3  # every full round, in one table
    # The round whose trigger fired is kept and marked (the last round may be a later
    # Inconclusive one when the world is loaded: the rollback starts after the round that failed).
    full_rows = gates[evidence._key(report["rollout"], "full", "gates")]
    assert any(r["result"] == "✗ Failed" and r["token-not-active"].startswith("✗ ") for r in full_rows), full_rows[:3]

    summaries = [a for a in artifacts if a.key == evidence._key(report["rollout"], "summary")]
    assert len(summaries) == 1, [a.key for a in artifacts]
    text = str(summaries[0].data)
    assert "rolled back" in text and "## canary-10pct: advance" in text and "## full: rollback" in text
    canary_part, full_part = text.split("## full")
    for part, phase in ((canary_part, "canary-10pct"), (full_part, "full")):
        for gate in plan.phase(phase).gates():
            line = next(x for x in part.splitlines() if x.startswith(f"| {gate.name} |"))
            assert gate.bound in line and re.search(f"`[{evidence.SPARKS} ]+", line), line
    assert re.search(r"\| token-not-active \| ✗ Failed \| \d+ \| [1-9]", full_part)
    assert text.count("<svg") == 2  # a chart per phase
