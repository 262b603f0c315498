"""The Slack bot notifier against the loopback Slack API, through slack_sdk's real HTTP."""

from __future__ import annotations

import logging
import time

import pytest

from phasegate.adapters.slack import SlackBotNotifier
from phasegate.notify import MAX_BLOCKS, Delivery, Kind, Notification, Severity
from phasegate.rehearsal.slack_server import SlackServer

ROLLOUT = "payments/token-api"
ONCALL = "S0ONCALL01"


def event(
    kind: Kind = Kind.PHASE_STARTED, severity: Severity = Severity.INFO, text: str = "canary at 10%", **kw: object
) -> Notification:
    return Notification(kind=kind, severity=severity, rollout=ROLLOUT, text=text, **kw)  # type: ignore[arg-type]


def bot(server: SlackServer, **kw: object) -> SlackBotNotifier:
    options: dict = {"mention": ONCALL, "base_url": server.url, "retry_backoff": 0.01, **kw}
    return SlackBotNotifier(server.token or "", "#deploys", **options)


def test_first_event_posts_the_header_then_replies_in_its_thread(slack_server: SlackServer) -> None:
    notifier = bot(slack_server)
    delivery = notifier.post(event(Kind.ROLLOUT_STARTED, text="v2 → canary"))

    header, reply = slack_server.calls
    assert slack_server.methods() == ["chat.postMessage", "chat.postMessage"]
    assert header.body["channel"] == "#deploys"
    assert header.body["blocks"][0]["type"] == "header"
    header_ts = notifier.threads[ROLLOUT]
    assert reply.body["thread_ts"] == header_ts
    assert "v2 → canary" in reply.body["text"]
    assert delivery == Delivery(ok=True, channel=slack_server.channel_id("#deploys"), ts=delivery.ts)
    assert delivery.ts != header_ts


def test_every_call_carries_the_bot_token_as_bearer(slack_server: SlackServer, slack_token: str) -> None:
    notifier = bot(slack_server)
    notifier.post(event())
    notifier.post(event(Kind.PHASE_PASSED))
    assert {c.headers["Authorization"] for c in slack_server.calls} == {f"Bearer {slack_token}"}


def test_later_events_reply_and_update_the_header_with_current_phase(slack_server: SlackServer) -> None:
    notifier = bot(slack_server)
    notifier.post(event(Kind.PHASE_STARTED, phase="canary"))
    notifier.post(event(Kind.PHASE_PASSED, text="all gates green", phase="canary"))

    assert slack_server.methods()[2:] == ["chat.postMessage", "chat.update"]
    update = slack_server.calls[3]
    header_ts = notifier.threads[ROLLOUT]
    assert update.body["ts"] == header_ts
    assert update.body["channel"] == slack_server.channel_id("#deploys")
    header = next(m for m in slack_server.messages if m.ts == header_ts)
    assert header.edits == 1
    fields = [f["text"] for f in header.blocks[1]["fields"]]  # type: ignore[index]
    assert fields == ["*Phase*\ncanary", "*Status*\n:large_blue_circle: Phase passed", "*Last event*\nall gates green"]
    assert all(m.thread_ts == header_ts for m in slack_server.messages if m.ts != header_ts)


def test_token_not_active_rollback_is_broadcast_and_mentions_on_call(slack_server: SlackServer) -> None:
    notifier = bot(slack_server)
    notifier.post(event())
    notifier.post(event(Kind.ROLLBACK_STARTED, Severity.CRITICAL, text="token_not_active 4% > 1%", phase="canary"))

    routine, critical = (c for c in slack_server.calls if c.body.get("thread_ts"))
    assert routine.body["reply_broadcast"] is False
    assert "<!subteam^" not in routine.body["text"]
    assert critical.body["reply_broadcast"] is True
    assert critical.body["text"].startswith(f"<!subteam^{ONCALL}> :rotating_light: Rollback started")


def test_resumed_rollout_continues_its_seeded_thread(slack_server: SlackServer) -> None:
    before_crash = bot(slack_server)
    before_crash.post(event())
    persisted = dict(before_crash.threads)

    resumed = bot(slack_server, threads=persisted)
    delivery = resumed.post(event(Kind.APPROVAL_GIVEN, text="approved by ana"))

    assert delivery.ok
    assert slack_server.methods()[2:] == ["chat.postMessage", "chat.update"]
    assert slack_server.calls[2].body["thread_ts"] == persisted[ROLLOUT]
    assert slack_server.calls[3].body["ts"] == persisted[ROLLOUT]
    assert len([m for m in slack_server.messages if m.thread_ts is None]) == 1


def test_huge_notification_is_accepted_by_slack_block_validation(slack_server: SlackServer) -> None:
    huge = event(text="x" * 10_000, fields={f"gate {i}": "y" * 3000 for i in range(80)})
    delivery = bot(slack_server).post(huge)
    reply = slack_server.calls[-1]
    assert delivery.ok, delivery.error
    assert len(reply.body["blocks"]) <= MAX_BLOCKS


def test_rate_limit_is_retried_after_retry_after(slack_server: SlackServer) -> None:
    notifier = bot(slack_server)
    slack_server.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    delivery = notifier.post(event())
    elapsed = time.monotonic() - started

    assert delivery.ok
    attempts = [(c.method, c.status) for c in slack_server.calls][:2]
    assert attempts == [("chat.postMessage", 429), ("chat.postMessage", 200)]
    assert elapsed >= 1.0


def test_rate_limit_asking_for_a_long_wait_fails_fast_instead_of_sleeping(slack_server: SlackServer) -> None:
    slack_server.rate_limit_next(1, retry_after=60)
    started = time.monotonic()
    delivery = bot(slack_server).post(event())

    assert time.monotonic() - started < 1.0
    assert delivery.error == "chat.postMessage: HTTP 429: ratelimited"
    assert len(slack_server.calls) == 1


def test_server_error_storm_returns_a_failed_delivery_quickly_without_raising(slack_server: SlackServer) -> None:
    notifier = bot(slack_server, max_retries=3)
    slack_server.fail_next(100, status=500)
    started = time.monotonic()
    delivery = notifier.post(event(Kind.ROLLBACK_STARTED, Severity.CRITICAL))

    assert time.monotonic() - started < 2.0
    assert not delivery.ok
    assert delivery.error == "chat.postMessage: HTTP 500: injected"
    assert len(slack_server.calls) == 4  # one try and three retries


def test_failed_header_update_does_not_fail_the_delivered_reply(
    slack_server: SlackServer, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = bot(slack_server)
    notifier.post(event())
    slack_server.fail_next(10, status=500, method="chat.update")
    delivery = notifier.post(event(Kind.PHASE_PASSED))

    assert delivery.ok
    assert "header update" in caplog.text


def test_unreachable_slack_is_a_failed_delivery(slack_server: SlackServer) -> None:
    notifier = bot(slack_server)
    slack_server.stop()
    delivery = notifier.post(event())
    assert not delivery.ok
    assert delivery.error and "URLError" in delivery.error


def test_check_auth_reports_valid_and_invalid_tokens(slack_server: SlackServer) -> None:
    assert bot(slack_server).check_auth().ok
    status = SlackBotNotifier("xoxb-wrong-token", "#deploys", base_url=slack_server.url).check_auth()
    assert not status.ok
    assert status.detail == "auth.test: HTTP 200: invalid_auth"
    assert slack_server.methods() == ["auth.test", "auth.test"]


def test_token_never_appears_in_logs_reprs_or_delivery_errors(
    slack_server: SlackServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "xoxb-1234-5678-do-not-leak"
    server = SlackServer(token=token).start()
    try:
        notifier = SlackBotNotifier(token, "#deploys", base_url=server.url, retry_backoff=0.01)
        deliveries = [notifier.post(event())]
        server.fail_next(4, status=500)  # one try and three retries
        deliveries.append(notifier.post(event(Kind.PHASE_FAILED)))
        server.rate_limit_next(1, retry_after=0)
        deliveries.append(notifier.post(event(Kind.PHASE_PASSED)))
        wrong = SlackBotNotifier(token + "-revoked", "#deploys", base_url=server.url, retry_backoff=0.01)
        deliveries.append(wrong.post(event()))
        auth = wrong.check_auth()
    finally:
        server.stop()
    deliveries.append(notifier.post(event()))  # connection refused

    assert [d.ok for d in deliveries] == [True, False, True, False, False]
    captured = capsys.readouterr()
    exposed = [caplog.text, captured.out, captured.err, repr(notifier), repr(wrong), repr(auth), *map(repr, deliveries)]
    assert all(token not in text for text in exposed)
    assert all(token not in str(record.args) for record in caplog.records)
