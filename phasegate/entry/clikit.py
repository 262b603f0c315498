"""What every command module shares: exit codes, the two consoles, and plan loading that
prints every problem and exits 2. Kept apart from ``cli.py`` so that command modules
(render_cli, doctor) can import it while ``cli.py`` imports them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from phasegate.errors import PlanError
from phasegate.plan import RolloutPlan, load_plan

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_ROLLED_BACK, EXIT_HALTED = 0, 1, 2, 3, 4
# A rollout's exit code per report outcome, the same three the flow run's final state names
# (flows/rollout.py STATE_NAMES: Completed "Promoted", Failed "Rolled back", Failed "Halted").
EXIT_BY_OUTCOME = {"promoted": EXIT_OK, "rolled_back": EXIT_ROLLED_BACK, "halted": EXIT_HALTED}

out = Console()
err = Console(stderr=True)


def load_or_exit(path: Path, replicas: int | None = None) -> RolloutPlan:
    """Load a plan or print every problem as FILE:LINE: path: message and exit 2; with
    ``replicas``, each phase's real share at that count is checked too."""
    try:
        return load_plan(path, replicas)
    except PlanError as exc:
        for line in exc.problems:
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s); nothing was deployed.", style="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None
