"""``phasegate render alerts|dashboard`` and ``phasegate backtest``.

The render commands print to stdout unless ``-o`` names a file, so they compose with
``kubectl create configmap --from-file`` and ``promtool check rules /dev/stdin`` alike. The
checked-in files under ``deployments/`` are these commands' output; a test keeps them
current.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import typer

from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.analysis import Outcome
from phasegate.backtest import backtest
from phasegate.decide import Step
from phasegate.durations import parse_duration
from phasegate.entry.clikit import EXIT_BAD_INPUT, EXIT_HALTED, EXIT_OK, EXIT_ROLLED_BACK, err, load_or_exit, out
from phasegate.render.alerts import render_alerts, to_yaml
from phasegate.render.dashboard import render_dashboard, to_json
from phasegate.review import parse_time

render_app = typer.Typer(
    help="Render Prometheus alert rules and a Grafana dashboard from a plan.", no_args_is_help=True
)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    out.print(f"wrote {output}", markup=False, highlight=False)


@render_app.command("alerts")
def alerts_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
) -> None:
    """Prometheus alerting rules: the plan's alerts plus one per rollback trigger."""
    _emit(to_yaml(render_alerts(load_or_exit(plan))), output)


@render_app.command("dashboard")
def dashboard_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
) -> None:
    """Grafana dashboard JSON for the plan's panels."""
    _emit(to_json(render_dashboard(load_or_exit(plan))), output)


def _when(text: str, now: float) -> float:
    """``now``, a duration ago (``3d``), unix seconds, or ISO 8601."""
    if text == "now":
        return now
    try:
        return now - parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise typer.BadParameter(f"expected 'now', a duration ago such as '3d', or ISO 8601, got {text!r}") from None


def backtest_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    from_: str = typer.Option(..., "--from", help="Start: a duration ago ('3d'), unix seconds or ISO 8601."),
    to: str = typer.Option("now", "--to", help="End, in the same forms."),
    phase: str = typer.Option(..., "--phase", help="The phase whose gates to replay."),
    prometheus_url: str = typer.Option(
        "http://127.0.0.1:9090", "--prometheus-url", envvar="PHASEGATE_PROMETHEUS_URL", help="Prometheus base URL."
    ),
) -> None:
    """Replay a phase's gates over past data as if it had been deployed at --from; print each decision.

    Exit 0 if the phase would have advanced or was still soaking, 3 if it would have rolled
    back, 4 if it would have held or halted for a person.
    """
    loaded = load_or_exit(plan)
    try:
        loaded.phase(phase)
    except KeyError:
        err.print(f"no phase {phase!r}; the plan has: {', '.join(p.name for p in loaded.phases)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    now = time.time()
    start, end = _when(from_, now), _when(to, now)
    provider = PrometheusProvider(prometheus_url)
    try:
        result = backtest(loaded, phase, provider, start, end)
    finally:
        provider.close()
    for r in result.rounds:
        failed = [m for m in r.measurements.values() if m.outcome is not Outcome.SUCCESSFUL]
        if failed or r.action.step is not Step.CONTINUE:
            stamp = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M")
            notes = "; ".join(f"{m.gate} {m.outcome.value}{': ' + m.message if m.message else ''}" for m in failed)
            out.print(f"{stamp}  {r.action.step.value:<8} {notes}", markup=False, highlight=False, soft_wrap=True)
    if result.skipped:
        out.print(f"not backtested (judge gates): {', '.join(result.skipped)}", markup=False, highlight=False)
    final = result.final
    summary = f"{len(result.rounds)} rounds; decision: {final.step.value} {final.reason}"
    out.print(summary, markup=False, highlight=False, soft_wrap=True)
    code = {Step.ROLLBACK: EXIT_ROLLED_BACK, Step.HOLD: EXIT_HALTED, Step.HALT: EXIT_HALTED}.get(final.step, EXIT_OK)
    raise typer.Exit(code)
