"""The terminal view of a rehearsal: phases, soak bars, the last gate round, decisions.

Built only from the events the rollout records (``RunContext.on_event``), so what the screen
shows is what the JSON report says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from phasegate.plan import RolloutPlan

MARK = {
    "Successful": ("✓", "green"),
    "Failed": ("✗", "red"),
    "Inconclusive": ("?", "yellow"),
    "Error": ("!", "magenta"),
}


class LiveView:
    """A ``RunContext.on_event`` callback that redraws a rich ``Live`` display."""

    def __init__(self, plan: RolloutPlan, console: Console) -> None:
        self.plan = plan
        self.phases: dict[str, dict[str, Any]] = {
            p.name: {"share": p.canary_share, "status": "waiting", "rounds": 0, "progress": 0.0, "outcomes": {}}
            for p in plan.phases
        }
        self.decisions: deque[str] = deque(maxlen=6)
        self.live = Live(self.render(), console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self.render())
        self.live.__exit__(None, None, None)
        self.live.console.print()  # off a non-terminal, the last frame ends without a newline

    def __call__(self, event: Mapping[str, Any], /) -> None:
        kind, phase = event["event"], event.get("phase")
        row = self.phases.get(phase) if phase else None
        if kind == "deployed" and row is not None:
            row["status"] = "deploy failed" if event.get("error") else "soaking"
        elif kind == "round" and row is not None:
            row.update(rounds=event["round"], progress=event.get("progress", 0.0), outcomes=event["outcomes"])
            if event["step"] != "continue":
                row["status"] = event["step"]
                self.decisions.append(f"{phase}: {event['step']} — {event.get('reason', '')}")
        elif kind == "approval" and row is not None:
            who = f" by {event['approver']}" if event.get("approver") else ""
            self.decisions.append(f"{phase}: {event['decision']}{who}")
            row["status"] = {"approve": "approved", "reject": "rejected"}.get(event["decision"], "timed out")
        elif kind == "approval_refused":
            self.decisions.append(f"{phase}: approval by {event['approver']} refused — {event['why']}")
        elif kind == "rollback_started" and row is not None:
            row["status"] = f"rolling back ({event['strategy']})"
            self.decisions.append(f"{phase}: rollback {event['strategy']} — {event['reason']}")
        elif kind == "rollback_completed" and row is not None:
            row["status"] = "rolled back" if event.get("ok") else "ROLLBACK FAILED"
        self.live.update(self.render())

    def render(self) -> Group:
        table = Table(title=f"rollout {self.plan.name}", expand=False)
        for column in ("phase", "share", "status", "soak", "rounds", "last round"):
            table.add_column(column)
        for name, row in self.phases.items():
            gates = Text()
            for gate, outcome in row["outcomes"].items():
                mark, style = MARK.get(outcome, ("·", "dim"))
                gates.append(f"{mark}{gate} ", style=style)
            table.add_row(
                name, f"{row['share']:g}%", row["status"], ProgressBar(total=1.0, completed=row["progress"], width=20),
                str(row["rounds"]), gates,
            )
        lines = [Text(d, overflow="fold") for d in self.decisions]
        return Group(table, *lines)
