"""Notifications: one value type, one Protocol, and a pure Block Kit renderer.

A failed notification is logged and recorded, and never stops a rollout or a rollback
(Flagger's notifier contract): adapters must not raise through ``post``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Severity(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Kind(enum.Enum):
    ROLLOUT_STARTED = "rollout_started"
    PHASE_STARTED = "phase_started"
    PHASE_PASSED = "phase_passed"
    PHASE_FAILED = "phase_failed"
    APPROVAL_NEEDED = "approval_needed"
    APPROVAL_REMINDER = "approval_reminder"
    APPROVAL_GIVEN = "approval_given"
    APPROVAL_REFUSED = "approval_refused"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_VERIFIED = "rollback_verified"
    ROLLBACK_FAILED = "rollback_failed"
    PROMOTED = "promoted"
    HALTED = "halted"
    REVIEW = "review"
    SIGNED_OFF = "signed_off"


@dataclass(frozen=True)
class Notification:
    """One event of one rollout. ``rollout`` keys the Slack thread (one per rollout)."""

    kind: Kind
    severity: Severity
    rollout: str
    text: str
    phase: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    links: Sequence[tuple[str, str]] = ()  # (label, url)


@dataclass(frozen=True)
class Delivery:
    """What became of one ``post``: recorded in the rollout's evidence."""

    ok: bool
    channel: str | None = None
    ts: str | None = None
    error: str | None = None


@runtime_checkable
class Notifier(Protocol):
    def post(self, notification: Notification) -> Delivery:
        """Send one notification. Never raises: failures come back as ``Delivery(ok=False)``."""
        ...
