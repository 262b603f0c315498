"""The incoming-webhook notifier against the loopback server's webhook path."""

from __future__ import annotations

import logging
import time

import pytest

from phasegate.adapters.slack import SlackWebhookNotifier
from phasegate.notify import Kind, Notification, Severity
from phasegate.rehearsal.slack_server import WEBHOOK_PATH, SlackServer


def event(kind: Kind = Kind.PHASE_PASSED, severity: Severity = Severity.INFO) -> Notification:
    return Notification(kind=kind, severity=severity, rollout="payments/token-api", text="canary green")


def webhook(server: SlackServer) -> SlackWebhookNotifier:
    return SlackWebhookNotifier(server.webhook_url, mention="S0ONCALL01", retry_backoff=0.01)


def test_webhook_posts_text_and_blocks_to_its_url(slack_server: SlackServer) -> None:
    delivery = webhook(slack_server).post(event())

    assert delivery.ok
    (call,) = slack_server.calls
    assert (call.method, call.path) == ("webhook", WEBHOOK_PATH)
    assert call.body["text"].startswith(":large_blue_circle: Phase passed")
    assert call.body["blocks"][0]["type"] == "section"
    assert "thread_ts" not in call.body


def test_webhook_critical_event_mentions_on_call(slack_server: SlackServer) -> None:
    webhook(slack_server).post(event(Kind.ROLLBACK_FAILED, Severity.CRITICAL))
    assert slack_server.webhook_posts[0]["text"].startswith("<!subteam^S0ONCALL01> ")


def test_webhook_rate_limit_is_retried_after_retry_after(slack_server: SlackServer) -> None:
    slack_server.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    delivery = webhook(slack_server).post(event())

    assert delivery.ok
    assert [c.status for c in slack_server.calls] == [429, 200]
    assert time.monotonic() - started >= 1.0


def test_webhook_server_error_storm_is_a_failed_delivery_and_never_leaks_the_url(
    slack_server: SlackServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = webhook(slack_server)
    slack_server.fail_next(4, status=500)
    failed = notifier.post(event())
    slack_server.stop()
    unreachable = notifier.post(event())

    assert not failed.ok and failed.error and failed.error.startswith("webhook: HTTP 500")
    assert len(slack_server.calls) == 4  # one try and three retries
    assert not unreachable.ok
    captured = capsys.readouterr()
    exposed = [caplog.text, captured.out, captured.err, repr(notifier), repr(failed), repr(unreachable)]
    assert all(WEBHOOK_PATH not in text for text in exposed)
