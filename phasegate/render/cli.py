"""``phasegate render alerts|dashboard`` and ``phasegate backtest``.

The render commands print to stdout unless ``-o`` names a file, so they compose with
``kubectl create configmap --from-file`` and ``promtool check rules /dev/stdin`` alike. The
checked-in files under ``deployments/`` are these commands' output; a test keeps them
current.
"""

from __future__ import annotations

from pathlib import Path

import typer

from phasegate.cli import load_or_exit, out
from phasegate.render.alerts import render_alerts, to_yaml
from phasegate.render.dashboard import render_dashboard, to_json

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
