"""Notifications: one value type, one Protocol, and a pure Block Kit renderer.

A failed notification is logged and recorded, and never stops a rollout or a rollback
(Flagger's notifier contract): adapters must not raise through ``post``.

Rendering lives here, not in the Slack adapter, so that what a team will read is testable
without a server and identical for the bot, the webhook and the console. Design choices:

- Slack rejects a whole message whose blocks break a documented limit (``invalid_blocks``),
  and a lost rollback notice is worse than a clipped one, so every string is clipped to its
  limit with an ellipsis and the block count is capped; rendering never fails.
- Links are mrkdwn links in a context block, not buttons: a link button still sends an
  interaction payload, and an app without an interactivity URL shows a warning icon on
  every click.
- User text is escaped (``&``, ``<``, ``>``) because Slack reads ``<...>`` as a link or
  mention; the mention is the only markup we insert on purpose.
- Approval reminders are few (half-time and expiry): a reminder every interval is what
  makes people mute a rollout channel.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
    DRIFT = "drift"  # the cluster no longer shows what the rollout left
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
    # Buttons (action_id, label, value): Slack posts a press to the app's interactivity URL.
    actions: Sequence[tuple[str, str, str]] = ()


@dataclass(frozen=True)
class Delivery:
    """What became of one ``post``: recorded in the rollout's evidence."""

    ok: bool
    channel: str | None = None
    ts: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class AuthStatus:
    """Whether a notifier's credentials work (preflight)."""

    ok: bool
    detail: str  # who the notifier posts as on success, the (scrubbed) reason otherwise


@runtime_checkable
class Notifier(Protocol):
    """Flagger's notifier: post one message. Everything a flow may ask of a notifier is here."""

    # Rollout id → the thread its messages continue. The flow seeds it from the release
    # record and writes it back, so a resumed rollout keeps its thread; empty and unused by
    # notifiers without threads.
    threads: MutableMapping[str, str]

    def post(self, notification: Notification) -> Delivery:
        """Send one notification. Never raises: failures come back as ``Delivery(ok=False)``."""
        ...

    def check_auth(self) -> AuthStatus:
        """Can this notifier deliver (a valid token)? Never raises."""
        ...


# --- Slack Block Kit limits (https://api.slack.com/reference/block-kit) ----------------
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_FIELDS_PER_SECTION = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
# Slack truncates ``text`` far later (40 000), but the fallback is what a push notification
# and a screen reader show: a section's worth is plenty.
MAX_FALLBACK_TEXT = MAX_SECTION_TEXT
# What the thread header shows of the latest event; the full text is in the reply.
MAX_HEADER_EVENT_TEXT = 200

ELLIPSIS = "…"

SEVERITY_EMOJI: Mapping[Severity, str] = {
    Severity.INFO: ":large_blue_circle:",
    Severity.WARNING: ":warning:",
    Severity.CRITICAL: ":rotating_light:",
}

TITLES: Mapping[Kind, str] = {
    Kind.ROLLOUT_STARTED: "Rollout started",
    Kind.PHASE_STARTED: "Phase started",
    Kind.PHASE_PASSED: "Phase passed",
    Kind.PHASE_FAILED: "Phase failed",
    Kind.APPROVAL_NEEDED: "Approval needed",
    Kind.APPROVAL_REMINDER: "Approval still needed",
    Kind.APPROVAL_GIVEN: "Approved",
    Kind.APPROVAL_REFUSED: "Approval refused",
    Kind.ROLLBACK_STARTED: "Rollback started",
    Kind.ROLLBACK_VERIFIED: "Rollback verified",
    Kind.ROLLBACK_FAILED: "Rollback FAILED",
    Kind.PROMOTED: "Promoted",
    Kind.HALTED: "Halted",
    Kind.DRIFT: "Cluster changed under the rollout",
    Kind.REVIEW: "Review",
    Kind.SIGNED_OFF: "Signed off",
}

# A rollback, or a cluster that changed under a rollout, is worth a page even if a caller
# forgot to mark it critical.
_ALWAYS_CRITICAL = frozenset({Kind.ROLLBACK_STARTED, Kind.ROLLBACK_FAILED, Kind.DRIFT})

_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")
_SLACK_ID = re.compile(r"^[UWS][A-Z0-9]{6,}$")


def is_critical(notification: Notification) -> bool:
    """Whether the event should reach people outside the thread (broadcast + mention)."""
    return notification.severity is Severity.CRITICAL or notification.kind in _ALWAYS_CRITICAL


def title(notification: Notification) -> str:
    return f"{SEVERITY_EMOJI[notification.severity]} {TITLES[notification.kind]}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last being an ellipsis when anything was cut.

    A cut never leaves half an HTML entity (``&am…``) behind: Slack would show it raw.
    """
    if len(text) <= limit:
        return text
    head = _PARTIAL_ENTITY.sub("", text[: limit - 1])
    return head + ELLIPSIS


def escape(text: str) -> str:
    """Text safe to put in mrkdwn: Slack's three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention_markup(handle: str) -> str:
    """Slack markup that pings ``handle``.

    Only IDs ping: ``U…``/``W…`` users and ``S…`` user groups, or ``here``/``channel``.
    A plain ``@name`` is shown as text (Slack does not resolve names in API messages),
    so plans should give the on-call group's ID. Already-formed markup passes through.
    """
    handle = handle.strip()
    if handle.startswith("<") and handle.endswith(">"):
        return handle
    bare = handle.removeprefix("@").removeprefix("!")
    if bare in {"here", "channel", "everyone"}:
        return f"<!{bare}>"
    if _SLACK_ID.match(bare):
        return f"<!subteam^{bare}>" if bare.startswith("S") else f"<@{bare}>"
    return escape(handle)


def _link(label: str, url: str) -> str:
    # ``|`` and ``>`` end the link markup early; spaces break it.
    safe_url = url.replace(" ", "%20").replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{safe_url}|{escape(label) or safe_url}>"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(clip(text, MAX_SECTION_TEXT))}


def _field_sections(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    rendered = [
        _mrkdwn(clip(f"*{escape(name)}*\n{escape(value)}", MAX_FIELD_TEXT)) for name, value in fields.items()
    ]
    return [
        {"type": "section", "fields": rendered[i : i + MAX_FIELDS_PER_SECTION]}
        for i in range(0, len(rendered), MAX_FIELDS_PER_SECTION)
    ]


def _link_context(links: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Links packed into one context block; a link too long to show whole is left out."""
    elements: list[str] = []
    for label, url in links:
        link = _link(label, url)
        if len(link) > MAX_SECTION_TEXT:
            continue
        if elements and len(elements[-1]) + 3 + len(link) <= MAX_SECTION_TEXT:
            elements[-1] += " · " + link
        elif len(elements) < MAX_CONTEXT_ELEMENTS:
            elements.append(link)
    return [{"type": "context", "elements": [_mrkdwn(e) for e in elements]}] if elements else []


Block = dict[str, Any]


def _cap(head: list[Block], middle: list[Block], tail: list[Block], what: str) -> list[Block]:
    """``head + middle + tail`` within ``MAX_BLOCKS``, dropping ``middle`` blocks from the end."""
    room = MAX_BLOCKS - len(head) - len(tail)
    if len(middle) <= room:
        return head + middle + tail
    kept = middle[: room - 1]
    dropped = len(middle) - len(kept)
    note = {"type": "context", "elements": [_mrkdwn(f"{ELLIPSIS} {dropped} more {what} not shown")]}
    return [*head, *kept, note, *tail]


def to_blocks(notification: Notification, *, mention: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The fallback ``text`` and Block Kit ``blocks`` for one event, within Slack's limits.

    ``mention`` (a handle, see ``mention_markup``) is put first in both, so the push
    notification pings too; adapters pass it for critical events only.
    """
    n = notification
    ping = f"{mention_markup(mention)} " if mention else ""
    where = f" · phase *{escape(n.phase)}*" if n.phase else ""
    headline = f"{title(n)} · `{escape(n.rollout)}`{where}"
    body = escape(n.text)
    fallback_where = f" / {escape(n.phase)}" if n.phase else ""
    text = clip(f"{ping}{title(n)}: {escape(n.rollout)}{fallback_where}: {body}", MAX_FALLBACK_TEXT)
    main = _section(f"{ping}{headline}\n{body}")
    buttons: list[dict[str, object]] = []
    if n.actions:
        # In the tail with the links: the field sections give way first under MAX_BLOCKS.
        buttons.append({"type": "actions", "elements": [
            {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": clip(label, 75)},
             "value": value, **({"style": "primary"} if i == 0 else {})}
            for i, (action_id, label, value) in enumerate(n.actions[:5])]})
    blocks = _cap([main], _field_sections(n.fields), _link_context(n.links) + buttons, "field sections")
    return text, blocks


def thread_status(previous: Mapping[str, str], notification: Notification) -> dict[str, str]:
    """The thread header's fields after ``notification``, in a fixed order.

    The phase survives phase-less events (a rollback notice keeps showing where it happened).
    """
    phase = notification.phase or previous.get("Phase")
    status = {"Phase": phase} if phase else {}
    status["Status"] = title(notification)
    status["Last event"] = clip(notification.text, MAX_HEADER_EVENT_TEXT)
    return status


def header_blocks(rollout: str, status_fields: Mapping[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The fallback ``text`` and blocks of a rollout thread's parent message.

    The parent is edited in place as the rollout moves on, so the channel shows one line of
    current state per rollout while the events stay in the thread.
    """
    header = {
        "type": "header",
        "text": {"type": "plain_text", "text": clip(f"Rollout {rollout}", MAX_HEADER_TEXT), "emoji": True},
    }
    summary = ", ".join(f"{name}: {value}" for name, value in status_fields.items())
    text = clip(escape(f"Rollout {rollout}" + (f": {summary}" if summary else "")), MAX_FALLBACK_TEXT)
    return text, _cap([header], _field_sections(status_fields), [], "status sections")


def reminder_times(pause_started: float, timeout_seconds: float) -> list[float]:
    """When to remind approvers of a pause: once at half the timeout, once at expiry.

    The message sent when the pause starts is the first notice, so two more are enough;
    an approval without a timeout (``<= 0``) gets none.
    """
    if timeout_seconds <= 0:
        return []
    return [pause_started + timeout_seconds / 2, pause_started + timeout_seconds]
