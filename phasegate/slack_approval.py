"""Approving from a Slack button: who clicked, proven by Slack, mapped to the plan's approvers.

Design decisions:

* Slack signs every interactivity request: ``X-Slack-Signature`` is ``v0=`` + hex
  HMAC-SHA256 of ``v0:<X-Slack-Request-Timestamp>:<raw body>`` under the app's signing
  secret. ``verify`` recomputes it over the raw bytes (never a re-encoded form), compares in
  constant time, and refuses timestamps more than five minutes from now, Slack's own replay
  window. A request failing either is answered 401 and moves nothing.
* The identity is Slack's ``user.id`` from the signed payload — not a name anyone typed.
  The plan maps Slack user IDs to approver names (``notifications.slack.approvers``); an
  unmapped user, or a mapped name not on the phase's approver list, is refused with the
  same rule as the UI form (``decide.approver_allowed``).
* The button's value names the paused flow run and the phase; the answer resumes that run
  with the approval form's own fields, so the flow's checks apply unchanged. Pressing
  *Approve* attests the manual criteria the message lists (the button says so).
* What each path proves: the UI form proves only that someone who can reach the Prefect UI
  typed a listed name; self-hosted Prefect records no account. The Slack path proves that
  the Slack account mapped to that name pressed the button, within five minutes of Slack
  signing it. Neither proves the criteria were checked — that stays the person's word.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from phasegate import approval_form
from phasegate.decide import approver_allowed, normalise_name
from phasegate.plan import Phase

REPLAY_WINDOW_SECONDS = 300
APPROVE, REJECT = "phasegate-approve", "phasegate-reject"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature of ``body`` sent at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str | None, sent: str | None, body: bytes, now: float) -> str | None:
    """Why the request is not Slack's, or None."""
    if not timestamp or not sent:
        return "missing Slack signature headers"
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return "malformed X-Slack-Request-Timestamp"
    if age > REPLAY_WINDOW_SECONDS:
        return f"request timestamp is {age:.0f}s from now (replay window {REPLAY_WINDOW_SECONDS}s)"
    if not hmac.compare_digest(signature(secret, timestamp, body), sent):
        return "signature does not match"
    return None


def button_value(flow_run_id: str, phase: str) -> str:
    """What an approval button carries back: the paused run and its phase."""
    return json.dumps({"flow_run": flow_run_id, "phase": phase}, sort_keys=True)


@dataclass(frozen=True)
class Click:
    """One verified button press."""

    user_id: str
    decision: str  # "approve" | "reject"
    flow_run_id: str
    phase: str


def parse_click(body: bytes) -> Click:
    """The press in a ``block_actions`` payload (form field ``payload``); ``ValueError`` if none."""
    fields = parse_qs(body.decode())
    try:
        payload: Mapping[str, Any] = json.loads(fields["payload"][0])
        action = next(a for a in payload.get("actions") or [] if a.get("action_id") in (APPROVE, REJECT))
        target = json.loads(action["value"])
        return Click(str(payload["user"]["id"]), "approve" if action["action_id"] == APPROVE else "reject",
                     str(target["flow_run"]), str(target["phase"]))
    except (KeyError, IndexError, StopIteration, TypeError, ValueError) as exc:
        raise ValueError(f"not a phasegate approval action: {exc}") from None


def answer(click: Click, phase: Phase, slack_approvers: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    """(the approval form's input, "") for an allowed press, or (None, why it is refused)."""
    name = slack_approvers.get(click.user_id)
    if name is None:
        return None, f"Slack user {click.user_id} is not mapped to an approver in the plan"
    if not normalise_name(name):
        return None, f"Slack user {click.user_id} is mapped to a blank approver name"
    if not approver_allowed(phase, name):
        return None, f"{name} is not on the approver list"
    # Every criterion is sent, off on a reject: the form's schema requires each one, and the
    # Prefect server refuses a resume that lacks any.
    comment = f"{click.decision} in Slack by <@{click.user_id}> (signed by Slack)"
    approving = click.decision == approval_form.APPROVE
    return approval_form.answer(click.decision, name, comment, [approving] * len(phase.manual_criteria)), ""
