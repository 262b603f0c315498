"""The approval form's fields, as every path that answers a pause sends them.

Design decisions:

* A decision is a pair of switches (Approve / Reject, Roll back / Hand over), exactly one of
  which must be on — not an enum. Prefect 3.9.1's V1 UI renders an enum (a ``Literal``) as a
  combobox whose option list does not open on a mouse click in the Resume dialog: the list's
  search box takes the focus, the dialog's focus trap takes it back, the list closes. A
  boolean renders as a switch, which a mouse works; an ``anyOf`` renders a button group, but
  its buttons pick a sub-form and set no value. Both switches start off, so nothing is ever
  decided by default, and the schema's ``oneOf`` (``one_of``) makes the Prefect server itself
  refuse a resume with neither or both on: the form shows the refusal and stays open.
* Every field is required in the schema, the criteria's switches too (the UI sends a switch
  nobody touched as off), so the form labels none of them "(Optional)", and a resume through
  the API must say something about every criterion. The paths that answer without the form —
  the Slack buttons, the trigger watch, the rehearsal approver — build their answer with
  ``answer`` so they cannot drift from the form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

APPROVE, REJECT = "approve", "reject"
ROLLBACK, HAND_OVER = "rollback", "hand_over"


def criterion_field(index: int) -> str:
    return f"criterion_{index + 1}"


def one_of(*switches: str) -> dict[str, Any]:
    """JSON-schema keywords that accept an answer only with exactly one of ``switches`` on."""
    return {"oneOf": [
        {"properties": {s: {"const": s == on} for s in switches}, "required": list(switches)} for on in switches
    ]}


def chosen(data: Mapping[str, Any], *switches: str) -> str:
    """The one switch that is on, or "" when none or several are."""
    on = [s for s in switches if data.get(s) is True]
    return on[0] if len(on) == 1 else ""


def answer(decision: str, approver: str, comment: str, criteria: Sequence[bool]) -> dict[str, Any]:
    """The approval form's input for ``decision`` (approve | reject), as the UI form sends it."""
    data: dict[str, Any] = {APPROVE: decision == APPROVE, REJECT: decision == REJECT,
                            "approver": approver, "comment": comment}
    data.update({criterion_field(i): bool(c) for i, c in enumerate(criteria)})
    return data


def halted_answer(decision: str, by: str) -> dict[str, Any]:
    """The halted rollout's form input for ``decision`` (rollback | hand_over)."""
    return {ROLLBACK: decision == ROLLBACK, HAND_OVER: decision == HAND_OVER, "by": by}
