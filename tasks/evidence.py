"""Evidence in the Prefect UI: so "why did it roll back?" is answered where people look.

Design decisions:

* **One gates table per phase, updated in place.** A 48 h soak has 577 full rounds; one
  artifact per round buried the one that mattered among hundreds of cards. ``PhaseGates``
  creates the phase's table once and PATCHes it (``update_artifact``) as rounds come in.
  Rows are rounds, newest first, one column per gate, so a round reads across one line.
* **Bounded rows.** The table keeps the last ``RECENT_ROUNDS`` rounds and every round that
  did not pass (capped at ``KEPT_NOT_PASSING``, newest kept), so a 2,000-round phase stays a
  table a person can read and a payload the API takes in milliseconds. The description
  counts what was left out.
* **Cheap per round.** Every full round is added to the table in memory (so the table has
  no gaps), but the API is called at most once per ``EVERY_WALL`` seconds — at once for a
  round that turns Failed or Error, and for the one that ends the phase. A failed publish backs off for
  ``BACKOFF_WALL`` seconds (a dead API must not cost a timeout every round) except for the
  phase's last round, which is always tried.
* **A per-rollout summary** (``publish_summary``): per phase and gate the verdict (the
  core's ``assess``, not a re-implementation), the last value against the bound, a text
  sparkline with the bound's level marked (readable anywhere the markdown goes), and an
  inline SVG of each gate against its bound (the Prefect UI renders it). Built from the rollout's
  report, so it needs no state of its own; published at each phase end and at the end,
  updating the same artifact.
* **Short keys.** Prefect keys allow lowercase letters, digits and dashes. A rollout id is
  ``plan:image``; keys name the image (``bodhi-server-v2-0-0-canary-10pct-gates``), with a
  stable 6-character hash of the whole id only when the name had to be shortened.
* Artifacts need a flow or task run context; outside one (a unit test calling a helper) they
  are skipped. Evidence must never stop a rollout: every failure is logged and swallowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact as _update_progress
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.context import FlowRunContext, TaskRunContext

from phasegate.analysis import Measurement, Outcome, assess
from phasegate.plan import GateKind, RolloutPlan

SUBJECT_CHARS = 40  # of a key's subject; a whole key stays under ~60 characters
RECENT_ROUNDS = 24
# Phase tables kept in a process for their approval pause's trigger watch; a worker that runs
# rollout after rollout keeps only the latest.
MAX_TABLES = 32
_TABLES: dict[str, PhaseGates] = {}
KEPT_NOT_PASSING = 48
EVERY_WALL = 2.0
BACKOFF_WALL = 30.0
SPARK_POINTS = 40
MARK = {Outcome.SUCCESSFUL: "✓", Outcome.INCONCLUSIVE: "?", Outcome.ERROR: "✗", Outcome.FAILED: "✗"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def subject(rollout: str) -> str:
    """A key's first part for rollout id ``plan:image``: the image's name and tag, short."""
    image = rollout.split(":", 1)[1] if ":" in rollout else rollout
    name = _slug(image.rsplit("/", 1)[-1].replace("@sha256:", ":")) or "rollout"
    if len(name) <= SUBJECT_CHARS:
        return name
    digest = hashlib.sha256(rollout.encode()).hexdigest()[:6]
    return f"{name[:SUBJECT_CHARS - 7].rstrip('-')}-{digest}"


def _key(rollout: str, *parts: str) -> str:
    return "-".join([subject(rollout), *(_slug(p) for p in parts if _slug(p))])


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def measurement_rows(measurements: Sequence[Measurement]) -> list[dict[str, str]]:
    return [
        {
            "gate": m.gate,
            "outcome": m.outcome.value,
            "value": fmt(m.value),
            "baseline": fmt(m.baseline),
            "compared": fmt(m.compared),
            "bound": m.bound,
            "message": m.message,
            "query": m.query,
        }
        for m in measurements
    ]


def markdown_table(measurements: Sequence[Measurement], *, with_query: bool = False) -> str:
    head = "| gate | outcome | value | baseline | compared | bound |" + (" query |" if with_query else "")
    sep = "|---|---|---|---|---|---|" + ("---|" if with_query else "")
    lines = [head, sep]
    for r in measurement_rows(measurements):
        row = f"| {r['gate']} | {r['outcome']} | {r['value']} | {r['baseline']} | {r['compared']} | {r['bound']} |"
        if with_query:
            row += f" `{r['query']}` |"
        lines.append(row)
    return "\n".join(lines)


def worst_outcome(measurements: Sequence[Measurement]) -> Outcome:
    return max((m.outcome for m in measurements), key=lambda o: o.severity, default=Outcome.SUCCESSFUL)


def elapsed(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _cell(m: Measurement) -> str:
    shown = m.compared if m.compared is not None else m.value
    text = f"{MARK[m.outcome]} {fmt(shown)}"
    # A failed value speaks for itself next to the bound; without data, the message says why.
    explain = m.outcome in (Outcome.ERROR, Outcome.INCONCLUSIVE) and m.message
    return f"{text} ({m.message})" if explain else text


@dataclass
class _Row:
    number: int
    outcome: Outcome
    data: dict[str, str]


@dataclass
class PhaseGates:
    """One phase's gates table: rows kept in memory, the artifact created once and updated."""

    rollout: str
    phase: str
    # Gate name → its bound, in the plan's order: the table's columns, the bounds in its description.
    gates: Mapping[str, str] = field(default_factory=dict)
    recent: list[_Row] = field(default_factory=list)
    not_passing: list[_Row] = field(default_factory=list)
    rounds: int = 0
    not_passing_total: int = 0
    artifact_id: UUID | None = None
    published_wall: float = -math.inf
    failed_wall: float = -math.inf
    dirty: bool = False

    @property
    def key(self) -> str:
        return _key(self.rollout, self.phase, "gates")

    @classmethod
    def for_phase(cls, rollout: str, phase: str, gates: Mapping[str, str], run: str | None) -> PhaseGates:
        """The phase's table in this process for the rollout run ``run``: the one its soak
        filled, if it ran here, so the rounds watched during its approval pause join the rounds
        before it. Another run of the same rollout starts a table of its own."""
        key = f"{run}/{_key(rollout, phase, 'gates')}"
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = cls(rollout, phase, gates)
            while len(_TABLES) > MAX_TABLES:
                del _TABLES[next(iter(_TABLES))]
        return table

    @property
    def next_round(self) -> int:
        return max((r.number for r in [*self.recent, *self.not_passing]), default=0) + 1

    def add(self, round_no: int, measurements: Sequence[Measurement], soak_elapsed: float,
            during: str = "") -> bool:
        """Record one round; whether it is news worth sending at once: a Failed or Error
        round worse than the round before. A streak of the same outcome, and a round without
        data (noise a plan tolerates, which at a compressed clock can come every few rounds),
        are sent at the usual pace."""
        outcome = worst_outcome(measurements)
        before = self.recent[-1].outcome.severity if self.recent else 0
        news = outcome.severity >= Outcome.ERROR.severity and outcome.severity > before
        # ``during``: where a round outside the soak was taken ("pause +0h05m"), in the soak column.
        data = {"round": str(round_no), "soak": during or elapsed(soak_elapsed),
                "result": f"{MARK[outcome]} {outcome.value}"}
        by_gate = {m.gate: m for m in measurements}
        for gate in [*self.gates, *(g for g in by_gate if g not in self.gates)]:
            data[gate] = _cell(by_gate[gate]) if gate in by_gate else ""
        row = _Row(round_no, outcome, data)
        self.rounds += 1
        self.recent = [*self.recent[-(RECENT_ROUNDS - 1):], row]
        if outcome is not Outcome.SUCCESSFUL:
            self.not_passing_total += 1
            self.not_passing = [*self.not_passing[-(KEPT_NOT_PASSING - 1):], row]
        self.dirty = True
        return news

    def table(self) -> list[dict[str, str]]:
        rows = {r.number: r for r in [*self.not_passing, *self.recent]}
        return [rows[n].data for n in sorted(rows, reverse=True)]

    def description(self) -> str:
        shown = len(self.table())
        text = (f"{self.phase}: {self.rounds} gate round{'s' if self.rounds != 1 else ''}, "
                f"{self.not_passing_total} not passing; newest first")
        if shown < self.rounds:
            text += f" (showing {shown}: the last {RECENT_ROUNDS} and the {KEPT_NOT_PASSING} latest not passing)"
        bounds = "; ".join(f"{name}: {bound}" for name, bound in self.gates.items())
        # Each cell is the number held to its gate's bound (for a delta gate, the difference).
        return f"{text}. Bounds — {bounds}" if bounds else text

    def publish(self, *, urgent: bool = False, final: bool = False) -> bool:
        """Send the table if due (urgent: news from ``add``; final: the phase's last round —
        both send now); whether it was sent."""
        if not self.dirty or not _in_run():
            return False
        now = time.monotonic()
        if not final and now - self.failed_wall < BACKOFF_WALL:
            return False
        if not (urgent or final) and now - self.published_wall < EVERY_WALL:
            return False
        try:
            table, description = self.table(), self.description()
            if self.artifact_id is None:
                created = create_table_artifact(table=table, key=self.key, description=description)
                # A sync flow gets the UUID (the async dispatch returns a coroutine only in async code).
                self.artifact_id = created if isinstance(created, UUID) else None
            else:
                with get_client(sync_client=True) as client:
                    # As create_table_artifact stores it: a JSON string (the UI parses it).
                    client.update_artifact(self.artifact_id,
                                           ArtifactUpdate(data=json.dumps(table), description=description))
            self.published_wall, self.dirty = now, False
            return True
        except Exception as exc:
            self.failed_wall = now
            get_run_logger().warning("could not publish the %s gate table: %s", self.phase, exc)
            return False


def start_progress(rollout: str, phase: str) -> str | None:
    if not _in_run():
        return None
    try:
        return str(create_progress_artifact(0.0, key=_key(rollout, phase, "soak"), description=f"{phase} soak"))
    except Exception:
        return None


def update_progress(artifact_id: str | None, percent: float) -> None:
    if artifact_id is None:
        return
    try:
        _update_progress(UUID(str(artifact_id)), max(0.0, min(100.0, percent)))
    except Exception:
        return


def publish_markdown(rollout: str, name: str, markdown: str, description: str) -> None:
    if not _in_run():
        return
    try:
        create_markdown_artifact(markdown=markdown, key=_key(rollout, name), description=description)
    except Exception as exc:
        get_run_logger().warning("could not publish %s: %s", name, exc)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], threshold: float | None, worse_high: bool = True) -> str:
    """The values over a phase, ``SPARK_POINTS`` wide (each point the worst of its stretch),
    on a scale that includes the bound, so a bar's height is comparable with the bound's
    level. No data is a space."""
    if not values:
        return ""
    size = math.ceil(len(values) / SPARK_POINTS)
    points: list[float | None] = []
    for i in range(0, len(values), size):
        chunk = [v for v in values[i:i + size] if v is not None and math.isfinite(v)]
        points.append((max(chunk) if worse_high else min(chunk)) if chunk else None)
    seen = [p for p in points if p is not None] + ([threshold] if threshold is not None else [])
    if not seen:
        return " " * len(points)
    low, high = min(seen), max(seen)
    span = high - low

    def level(v: float) -> int:
        return 0 if span == 0 else min(len(SPARKS) - 1, int((v - low) / span * (len(SPARKS) - 1) + 0.5))

    return "".join(" " if p is None else SPARKS[level(p)] for p in points) + (
        f" bound at {SPARKS[level(threshold)]}" if threshold is not None and span else "")


SVG_WIDTH, SVG_ROW, SVG_LABEL = 560, 30, 200
LINE, BAD = "#3b82f6", "#e5484d"


def svg_chart(series: Sequence[tuple[str, Sequence[Measurement], float | None]]) -> str:
    """Small multiples, one row per gate: its values over the phase (the number held to the
    bound), the bound as a dashed line, rounds that did not pass as red dots.

    Inline SVG on lines of its own with no blank line inside: Markdown keeps that one HTML
    block, and the Prefect UI renders it through DOMPurify's SVG profile (``style``
    attributes are stripped there, so only presentation attributes are used)."""
    plot = SVG_WIDTH - SVG_LABEL - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{SVG_ROW * len(series) + 4}" '
             f'viewBox="0 0 {SVG_WIDTH} {SVG_ROW * len(series) + 4}" role="img" aria-label="gate values">']
    for i, (name, measurements, threshold) in enumerate(series):
        top = i * SVG_ROW + 4
        height = SVG_ROW - 10
        # currentColor: readable in the UI's dark and light themes alike.
        parts.append(f'<text x="0" y="{top + height - 4}" font-size="12" fill="currentColor">{_xml(name)}</text>')
        values = [(j, m.compared if m.compared is not None else m.value, m.outcome)
                  for j, m in enumerate(measurements)]
        finite = [v for _, v, _ in values if v is not None and math.isfinite(v)]
        seen = finite + ([threshold] if threshold is not None else [])
        if not seen:
            continue
        low, high = min(seen), max(seen)
        span = (high - low) or 1.0
        count = max(len(values) - 1, 1)

        def xy(j: float, v: float, top: float = top, height: float = height, low: float = low,
               span: float = span, count: int = count) -> tuple[float, float]:
            return SVG_LABEL + plot * j / count, top + height - height * (v - low) / span

        step = max(1, len(values) // plot)  # at most a point per pixel
        points = " ".join("{:.1f},{:.1f}".format(*xy(j, v)) for j, v, _ in values[::step]
                          if v is not None and math.isfinite(v))
        if threshold is not None:
            _, y = xy(0, threshold)
            parts.append(f'<line x1="{SVG_LABEL}" y1="{y:.1f}" x2="{SVG_LABEL + plot}" y2="{y:.1f}" '
                         f'stroke="{BAD}" stroke-width="1" stroke-dasharray="4 3"/>')
        parts.append(f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="1.5"/>')
        last = next(((j, v) for j, v, _ in reversed(values) if v is not None and math.isfinite(v)), None)
        if last is not None:  # the latest value, visible even when the phase had one round
            x, y = xy(*last)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{LINE}"/>')
        bad = [(j, v) for j, v, o in values if o is not Outcome.SUCCESSFUL and v is not None and math.isfinite(v)]
        for j, v in bad[-KEPT_NOT_PASSING:]:
            x, y = xy(j, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{BAD}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _measurement(row: Mapping[str, Any]) -> Measurement:
    return Measurement(gate=row["gate"], outcome=Outcome(row["outcome"]), at=row.get("at", 0.0),
                       value=row.get("value"), baseline=row.get("baseline"), compared=row.get("compared"),
                       bound=row.get("bound", ""))


def summary_markdown(plan: RolloutPlan, report: Mapping[str, Any], outcome: str | None = None) -> str:
    """Per phase and gate: verdict, last value against the bound, and the phase's values."""
    state = outcome or "in progress"
    lines = [f"# {report.get('image', report.get('rollout', ''))}: {state}", "",
             f"Plan **{plan.name}**, target `{report.get('target', '')}`.", ""]
    known = {p.name: p for p in plan.phases}
    for p in report.get("phases", []):
        phase = known.get(p["name"])
        rounds = [[_measurement(m) for m in rnd] for rnd in p.get("rounds", [])]
        lines += [f"## {p['name']}: {p['outcome']}", "", p.get("reason", "") or "", "",
                  "| gate | verdict | rounds | last | bound | over the phase |", "|---|---|---|---|---|---|"]
        charted: list[tuple[str, Sequence[Measurement], float | None]] = []
        for gate in (phase.gates() if phase else []):
            series = [m for rnd in rounds for m in rnd if m.gate == gate.name]
            if not series:
                lines.append(f"| {gate.name} | not measured | 0 | — | {gate.bound} | |")
                continue
            verdict = assess(gate, series)
            last = series[-1]
            shown = [m.compared if m.compared is not None else m.value for m in series]
            threshold = None if gate.kind is GateKind.JUDGE else (0.0 if gate.kind is GateKind.ZERO else gate.threshold)
            charted.append((gate.name, series, threshold))
            chart = sparkline(shown, threshold, worse_high=not gate.op.startswith(">"))
            lines.append(f"| {gate.name} | {MARK[verdict.outcome]} {verdict.outcome.value} | {len(series)} | "
                         f"{fmt(last.compared if last.compared is not None else last.value)} | {gate.bound} | "
                         f"`{chart}` |")
        lines.append("")
        if charted:
            lines += [svg_chart(charted), ""]
    halted = report.get("halted")
    if halted:
        lines.append(f"Halted in {halted['phase']}: {halted['reason']}")
    rb = report.get("rollback")
    if rb:
        lines.append(f"Rollback: {rb['strategy']} in {rb['phase']} — {rb['reason']} (verified: {rb['ok']})")
    return "\n".join(lines).rstrip() + "\n"


def publish_summary(plan: RolloutPlan, report: Mapping[str, Any], outcome: str | None = None) -> None:
    """Create or update this flow run's rollout summary (one artifact, however often called)."""
    if not _in_run():
        return
    key = _key(str(report.get("rollout", "")), "summary")
    try:
        markdown = summary_markdown(plan, report, outcome)
        description = f"rollout summary: {outcome or 'in progress'}"
        ctx = FlowRunContext.get()
        run_id = ctx.flow_run.id if ctx and ctx.flow_run else None
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            ), limit=1) if run_id else []
            if found:
                client.update_artifact(found[0].id, ArtifactUpdate(data=markdown, description=description))
                return
        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as exc:
        get_run_logger().warning("could not publish the rollout summary: %s", exc)
