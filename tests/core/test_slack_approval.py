"""Slack's request signature and the press → approval mapping, in milliseconds."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from phasegate import slack_approval
from tests.core.builders import phase

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BODY = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fweather&text=94070"


def test_the_signature_is_the_one_slacks_own_sdk_computes_and_accepts():
    # slack_sdk's SignatureVerifier is Slack's implementation, independent of ours.
    from slack_sdk.signature import SignatureVerifier

    theirs = SignatureVerifier(SECRET, clock=FixedClock(1531420618 + 60))
    sent = slack_approval.signature(SECRET, "1531420618", BODY)
    assert sent == theirs.generate_signature(timestamp="1531420618", body=BODY)
    assert theirs.is_valid(BODY, "1531420618", sent)
    assert slack_approval.verify(SECRET, "1531420618", sent, BODY, now=1531420618 + 60) is None


class FixedClock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


@pytest.mark.parametrize(("timestamp", "sent", "now", "why"), [
    ("1531420618", "v0=" + "0" * 64, 1531420618, "signature does not match"),
    ("1531420618", None, 1531420618, "missing Slack signature headers"),
    ("1531420618", "x", 1531420618 + 301, "replay window"),
    ("soon", "x", 0, "malformed"),
])
def test_forged_missing_or_stale_requests_are_refused(timestamp, sent, now, why):
    assert why in (slack_approval.verify(SECRET, timestamp, sent, BODY, now) or "")


def test_an_altered_body_breaks_the_signature():
    sent = slack_approval.signature(SECRET, "1531420618", BODY)
    assert slack_approval.verify(SECRET, "1531420618", sent, BODY + b"&x=1", 1531420618) == "signature does not match"


def press(user: str, action: str = slack_approval.APPROVE) -> bytes:
    value = slack_approval.button_value("8c3f-run", "canary")
    return urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": user},
                                             "actions": [{"action_id": action, "value": value}]})}).encode()


def test_a_press_maps_the_slack_user_to_the_approver_and_attests_the_criteria():
    p = phase(approval={"approvers": ["alice"]}, manual_criteria=["no tickets"])
    click = slack_approval.parse_click(press("U0ALICE"))
    data, why = slack_approval.answer(click, p, {"U0ALICE": "Alice"})
    assert why == "" and data is not None
    assert (data["approve"], data["reject"], data["approver"], data["criterion_1"]) == (True, False, "Alice", True)
    assert click.flow_run_id == "8c3f-run"


def test_unmapped_users_and_mapped_names_off_the_list_are_refused():
    p = phase(approval={"approvers": ["alice"]})
    click = slack_approval.parse_click(press("U0MALLORY"))
    assert slack_approval.answer(click, p, {"U0ALICE": "alice"})[1] == "Slack user U0MALLORY is not mapped to an " \
                                                                         "approver in the plan"
    assert "not on the approver list" in slack_approval.answer(click, p, {"U0MALLORY": "mallory"})[1]


def test_a_reject_press_rejects_and_sends_every_criterion_off():
    # The form's schema requires every criterion: a reject that left them out would be
    # refused by the Prefect server, and the run would go on waiting.
    p = phase(manual_criteria=["no tickets", "audit log read"])
    data, _ = slack_approval.answer(slack_approval.parse_click(press("U1", slack_approval.REJECT)), p, {"U1": "bob"})
    assert data is not None and (data["approve"], data["reject"]) == (False, True)
    assert (data["criterion_1"], data["criterion_2"]) == (False, False)


def test_a_payload_that_is_not_a_phasegate_button_is_an_error():
    with pytest.raises(ValueError, match="not a phasegate approval action"):
        slack_approval.parse_click(b"payload=%7B%7D")
