"""The ``phasegate`` command.

Exit codes are part of the interface, so scripts and CI can branch on them:
0 success / promoted, 1 internal error, 2 bad input (plan, arguments), 3 rolled back,
4 halted for a person.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from phasegate.durations import format_duration
from phasegate.errors import PlanError
from phasegate.plan import RolloutPlan, load_plan

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_ROLLED_BACK, EXIT_HALTED = 0, 1, 2, 3, 4

app = typer.Typer(
    name="phasegate",
    help="Progressive Kubernetes rollouts run as Prefect workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Progressive Kubernetes rollouts run as Prefect workflows."""


def load_or_exit(path: Path) -> RolloutPlan:
    """Load a plan or print every problem as FILE:LINE: path: message and exit 2."""
    try:
        return load_plan(path)
    except PlanError as exc:
        for line in exc.problems:
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s); nothing was deployed.", style="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def summary(plan: RolloutPlan) -> list[str]:
    t = plan.target
    lines = [
        f"plan {plan.name}: {t.namespaces.production}/{t.deployment} (container {t.container})",
        f"  {len(plan.metrics)} metrics, {len(plan.alerts)} alerts, "
        f"{len(plan.dashboard.panels) if plan.dashboard else 0} dashboard panels",
    ]
    for p in plan.phases:
        lines.append(
            f"  phase {p.name}: {p.environment.value} {p.canary_share:g}%, soak {format_duration(p.soak)} "
            f"every {format_duration(p.interval)}; {len(p.triggers)} triggers, {len(p.success)} success criteria, "
            f"{len(p.checks)} checks; rollback {p.default_rollback.value}"
        )
    if plan.reviews:
        cadence = ", ".join(f"{c.name} every {format_duration(c.every)}" for c in plan.reviews.cadence)
        lines.append(f"  reviews: {cadence}; {len(plan.reviews.gates)} gates")
    if plan.signoff:
        incident = f", closes {plan.signoff.incident}" if plan.signoff.incident else ""
        lines.append(f"  sign-off after {format_duration(plan.signoff.after)}{incident}")
    return lines


@app.command()
def validate(plan: Path = typer.Argument(..., help="Plan YAML file.")) -> None:
    """Check a plan; print a summary, or every problem as FILE:LINE: path: message (exit 2)."""
    loaded = load_or_exit(plan)
    for line in summary(loaded):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    out.print("valid", style="green")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
