"""Review reports: a markdown page and PNG charts for a review, a sign-off or a comparison.

Design decisions:

* Markdown, because the same text is a Prefect markdown artifact, a file in the reports
  directory and a pull-request comment; the charts sit next to it and are linked by file name.
* The table says what a reviewer asks first: gate, value, bound, outcome. A review measured
  day by day (summaries, sign-off) shows the worst value and how many days failed, then a
  per-day grid, so the bad day is named instead of averaged away.
* Charts are drawn with matplotlib's Agg backend (no display on a worker) from one range
  query per gate metric over the review window, at about ``CHART_POINTS`` points; the rate
  window is at least ``MIN_CHART_RANGE`` so sparse scrapes still give two samples. An
  absolute bound is drawn as a line, a pre-deploy baseline as a dotted line.
* A chart whose query fails is left out and the failure listed: the verdict table matters
  more than a picture, and a report must never fail for want of one.
* A comparison (the seed's Phase 2: "compare local vs distributed") evaluates the same gates
  for two releases and draws both series over time since each window's start, so releases
  from different weeks line up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib

# Headless workers have no display: choose the file-only backend before pyplot loads.
matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from phasegate import errors, review
from phasegate.analysis import Assessment, Measurement, Outcome
from phasegate.durations import format_duration
from phasegate.plan import Baseline, Gate, GateKind, RolloutPlan
from phasegate.ports import MetricsProvider

CHART_POINTS = 240
MIN_CHART_RANGE = 900.0  # 15 min
MARK = {
    Outcome.SUCCESSFUL: "✅ Successful",
    Outcome.FAILED: "❌ Failed",
    Outcome.INCONCLUSIVE: "⚠️ Inconclusive",
    Outcome.ERROR: "⛔ Error",
}
_SHORT = {Outcome.SUCCESSFUL: "✅", Outcome.FAILED: "❌", Outcome.INCONCLUSIVE: "⚠️", Outcome.ERROR: "⛔"}


@dataclass(frozen=True)
class Report:
    """A written report: its markdown, the file it is in, and its charts."""

    title: str
    markdown: str
    path: Path
    charts: tuple[Path, ...]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "report"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _value_cell(measurements: Sequence[Measurement]) -> str:
    values = [m.value for m in measurements if m.value is not None]
    if not values:
        return "no data"
    if len(measurements) == 1:
        cell = _number(values[0])
        base = measurements[0].baseline
        return cell if base is None else f"{cell} (pre-deploy {_number(base)})"
    return f"{_number(min(values))} … {_number(max(values))}"


def _outcome_cell(assessment: Assessment) -> str:
    cell = MARK[assessment.outcome]
    if assessment.measurements > 1:
        cell += f" ({assessment.failed}/{assessment.measurements} days failed)"
    if assessment.reason:
        cell += f" — {assessment.reason}"
    return cell.replace("|", "\\|")


def review_markdown(result: review.ReviewResult, charts: Sequence[Path] = (), notes: Sequence[str] = ()) -> str:
    """The report page. ``charts`` are linked by file name (they sit next to the page)."""
    verdict = "PASSED" if result.passed else f"NOT PASSED ({result.outcome.value})"
    lines = [
        f"# {result.title}: {result.release}",
        "",
        f"**Verdict: {verdict}**",
        "",
        f"- Window: {result.window} ({format_duration_seconds(result.window.seconds)})",
        f"- Promoted: {datetime.fromtimestamp(result.release.promoted_at, UTC):%Y-%m-%d %H:%M UTC}",
        "",
        "| Gate | Value | Bound | Outcome |",
        "|---|---|---|---|",
    ]
    for gate in result.gates:
        value, outcome = _value_cell(result.measurements[gate.name]), _outcome_cell(result.assessments[gate.name])
        lines.append(f"| {gate.name} | {value} | {gate.bound} | {outcome} |")
    if result.tile is not None and any(len(m) > 1 for m in result.measurements.values()):
        lines += ["", "## Day by day", "", "| Day | " + " | ".join(g.name for g in result.gates) + " |"]
        lines.append("|---" * (len(result.gates) + 1) + "|")
        days = len(next(iter(result.measurements.values())))
        for i in range(days):
            at = result.measurements[result.gates[0].name][i].at
            cells = [_SHORT[result.measurements[g.name][i].outcome] for g in result.gates]
            lines.append(f"| {i + 1} ({datetime.fromtimestamp(at, UTC):%m-%d}) | " + " | ".join(cells) + " |")
    problems = result.problems()
    if problems:
        lines += ["", "## What did not pass", ""] + [f"- {p}" for p in problems]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def format_duration_seconds(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(seconds)))


def _chart_query(plan: RolloutPlan, gate: Gate, release: review.Release, window: review.Window) -> tuple[str, float]:
    step = max(60.0, window.seconds / CHART_POINTS)
    return review.gate_query(plan, gate, release, max(MIN_CHART_RANGE, 2 * step)), step


def _draw(
    path: Path,
    title: str,
    unit: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    threshold: float | None = None,
    baseline: float | None = None,
    elapsed: bool = False,
) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    try:
        for label, points in series:
            if elapsed:
                t0 = points[0][0] if points else 0.0
                xs: list = [(t - t0) / 3600 for t, _ in points]
            else:
                xs = [datetime.fromtimestamp(t, UTC) for t, _ in points]
            ax.plot(xs, [v for _, v in points], label=label, linewidth=1.2)
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"bound {threshold:g}")
        if baseline is not None:
            ax.axhline(baseline, color="tab:gray", linestyle=":", linewidth=1, label=f"pre-deploy {baseline:.4g}")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if elapsed:
            ax.set_xlabel("hours since window start")
        else:
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
            fig.autofmt_xdate()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _charts(
    plan: RolloutPlan, result: review.ReviewResult, provider: MetricsProvider, out_dir: Path, stem: str
) -> tuple[list[Path], list[str]]:
    charts: list[Path] = []
    notes: list[str] = []
    drawn: set[str] = set()
    for gate in result.gates:
        if gate.metric in drawn:
            continue
        drawn.add(gate.metric)
        promql, step = _chart_query(plan, gate, result.release, result.window)
        try:
            points = provider.query_range(promql, result.window.start, result.window.end, step)
        except errors.PhasegateError as exc:
            notes.append(f"chart {gate.metric} left out: {exc}")
            continue
        found = result.measurements[gate.name]
        metric = plan.metrics[gate.metric]
        charts.append(
            _draw(
                out_dir / f"{stem}-{slug(gate.metric)}.png",
                metric.description or gate.metric,
                metric.unit,
                [(f"{result.release.deployment} (stable)", points)],
                threshold=gate.threshold if gate.kind is GateKind.ABSOLUTE else None,
                baseline=found[0].baseline if gate.compares and gate.baseline is Baseline.PRE_DEPLOY else None,
            )
        )
    return charts, notes


def write_review_report(
    plan: RolloutPlan, result: review.ReviewResult, provider: MetricsProvider, out_dir: Path
) -> Report:
    """Charts and ``<stem>.md`` under ``out_dir``; the stem names release, review and window end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    end = datetime.fromtimestamp(result.window.end, UTC).strftime("%Y%m%dT%H%M")
    stem = slug(f"{result.release.namespace}-{result.release.deployment}-{result.title}-{end}")
    charts, notes = _charts(plan, result, provider, out_dir, stem)
    markdown = review_markdown(result, charts, notes)
    path = out_dir / f"{stem}.md"
    path.write_text(markdown)
    return Report(f"{result.title}: {result.release}", markdown, path, tuple(charts))
