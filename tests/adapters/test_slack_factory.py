"""make_notifier picks bot → webhook → console from the environment; the console fallback."""

from __future__ import annotations

import io

import pytest

from phasegate.adapters import slack
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.slack import SlackBotNotifier, SlackConfigError, SlackWebhookNotifier, make_notifier
from phasegate.notify import Kind, Notification, Severity
from phasegate.rehearsal.slack_server import SlackServer

EVENT = Notification(Kind.PHASE_PASSED, Severity.INFO, "payments/token-api", "canary green", phase="canary")


@pytest.mark.parametrize(
    ("env", "adapter"),
    [
        ({"SLACK_BOT_TOKEN": "xoxb-a", "SLACK_WEBHOOK_URL": "https://hooks.example/x"}, SlackBotNotifier),
        ({"SLACK_WEBHOOK_URL": "https://hooks.example/x"}, SlackWebhookNotifier),
        ({}, ConsoleNotifier),
        ({"SLACK_BOT_TOKEN": ""}, ConsoleNotifier),
    ],
)
def test_factory_prefers_bot_then_webhook_then_console(env: dict[str, str], adapter: type) -> None:
    assert isinstance(make_notifier("#deploys", None, env=env), adapter)


def test_factory_channel_from_env_overrides_the_plan(slack_server: SlackServer) -> None:
    env = {**slack_server.env(), "SLACK_CHANNEL": "#override"}
    notifier = make_notifier("#from-plan", None, env=env)
    assert notifier.post(EVENT).ok
    assert slack_server.calls[0].body["channel"] == "#override"


def test_factory_bot_without_channel_is_a_setup_error() -> None:
    with pytest.raises(SlackConfigError, match="channel"):
        make_notifier(None, None, env={"SLACK_BOT_TOKEN": "xoxb-a"})


def test_factory_api_url_must_end_with_a_slash() -> None:
    with pytest.raises(SlackConfigError, match="end with '/'"):
        make_notifier("#d", None, env={"SLACK_BOT_TOKEN": "xoxb-a", "SLACK_API_URL": "http://127.0.0.1:1/api"})


def test_secret_block_token_is_loaded_on_first_post_only(
    slack_server: SlackServer, slack_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []

    def load_secret(name: str) -> str:
        loads.append(name)
        return slack_token

    monkeypatch.setattr(slack, "load_secret", load_secret)
    notifier = make_notifier("#deploys", None, secret_block="slack-bot-token", env={"SLACK_API_URL": slack_server.url})
    assert isinstance(notifier, SlackBotNotifier)
    assert loads == []
    notifier.post(EVENT)
    notifier.post(EVENT)
    assert loads == ["slack-bot-token"]
    assert slack_server.calls[0].headers["Authorization"] == f"Bearer {slack_token}"


def test_secret_block_that_cannot_be_loaded_is_a_failed_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_secret(name: str) -> str:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(slack, "load_secret", load_secret)
    delivery = make_notifier("#deploys", None, secret_block="missing", env={}).post(EVENT)
    assert not delivery.ok
    assert delivery.error == "ValueError: Unable to find block document named missing"


def test_preflight_check_passes_for_console_and_webhook_without_posting() -> None:
    assert ConsoleNotifier(file=io.StringIO()).check_auth().ok
    assert SlackWebhookNotifier("https://hooks.example/services/x").check_auth().detail.startswith("incoming webhook")


def test_console_prints_one_compact_line_and_keeps_what_was_sent() -> None:
    out = io.StringIO()
    notifier = ConsoleNotifier(file=out)
    delivery = notifier.post(
        Notification(
            Kind.ROLLBACK_STARTED, Severity.CRITICAL, "payments/token-api", "token_not_active [red]4%[/red]",
            phase="canary", fields={"error rate": "4%"}, links=[("Grafana", "https://grafana/d/x")],
        )
    )
    assert delivery.ok
    assert notifier.sent[0].kind is Kind.ROLLBACK_STARTED
    assert out.getvalue().splitlines() == [
        "[CRIT] Rollback started payments/token-api/canary: token_not_active [red]4%[/red]",
        "    error rate=4%  Grafana <https://grafana/d/x>",
    ]
