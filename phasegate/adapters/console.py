"""The notifier used when no Slack is configured, and in rehearsals.

It prints one compact line per event (plus a line of fields and links when there are
any) so a rehearsal shows exactly what would have been sent, and keeps every notification
in ``sent`` for the rehearsal report. Text is printed as ``rich.text.Text``, never parsed as
markup: a notification saying ``[red]`` must not restyle the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import IO

from rich.console import Console
from rich.text import Text

from phasegate import notify

log = logging.getLogger(__name__)

_STYLE = {
    notify.Severity.INFO: "cyan",
    notify.Severity.WARNING: "yellow",
    notify.Severity.CRITICAL: "bold red",
}
_LABEL = {
    notify.Severity.INFO: "info",
    notify.Severity.WARNING: "warn",
    notify.Severity.CRITICAL: "CRIT",
}


class ConsoleNotifier:
    """Prints notifications to a terminal (or ``file``) and remembers them."""

    def __init__(self, console: Console | None = None, *, file: IO[str] | None = None) -> None:
        self.console = console or Console(file=file, highlight=False, soft_wrap=True)
        self.sent: list[notify.Notification] = []
        self.threads: MutableMapping[str, str] = {}

    def __repr__(self) -> str:
        return f"ConsoleNotifier(sent={len(self.sent)})"

    def check_auth(self) -> notify.AuthStatus:
        return notify.AuthStatus(ok=True, detail="console")

    def post(self, notification: notify.Notification) -> notify.Delivery:
        self.sent.append(notification)
        try:
            self.console.print(render(notification))
        except Exception as exc:  # the Notifier contract: a broken terminal must not stop a rollback
            log.warning("console notification %s failed: %s", notification.kind.value, exc)
            return notify.Delivery(ok=False, channel="console", error=f"{type(exc).__name__}: {exc}")
        return notify.Delivery(ok=True, channel="console")


def render(n: notify.Notification) -> Text:
    """One event as the console shows it: severity, title, rollout/phase, text; then details."""
    line = Text()
    line.append(f"[{_LABEL[n.severity]}] ", style=_STYLE[n.severity])
    line.append(notify.TITLES[n.kind], style="bold")
    line.append(f" {n.rollout}" + (f"/{n.phase}" if n.phase else ""), style="dim")
    line.append(f": {n.text}")
    details = [f"{name}={value}" for name, value in n.fields.items()]
    details += [f"{label} <{url}>" for label, url in n.links]
    if details:
        line.append("\n    " + "  ".join(details), style="dim")
    return line
