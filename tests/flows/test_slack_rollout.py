"""Slack in a real rollout: one thread per rollout, critical events broadcast, and a Slack
outage that never holds up a rollback. The loopback server speaks Slack's Web API shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from phasegate.adapters.slack import SlackBotNotifier, make_notifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def rehearse_with_slack(slack_server, scenario="token-not-active", notifier=None):
    env = slack_server.env()
    notifier = notifier or make_notifier("#engineering", "@oncall", env={**env, "SLACK_CHANNEL": "#engineering"})
    with world(load_plan(TWO_PHASE), scenario=scenario, speed=172800.0, notifier=notifier) as w:
        return run_in(w, TWO_PHASE)


def test_rollback_scenario_posts_one_thread_with_the_rollback_broadcast(slack_server, slack_token, caplog):
    caplog.set_level(logging.DEBUG)
    report = rehearse_with_slack(slack_server)
    assert report["outcome"] == "rolled_back"
    posts = [c for c in slack_server.calls if c.method == "chat.postMessage"]
    parents = [c for c in posts if not c.body.get("thread_ts")]
    assert len(parents) == 1, "one thread per rollout"
    thread = {c.body["thread_ts"] for c in posts if c.body.get("thread_ts")}
    assert len(thread) == 1
    assert all(c.headers.get("Authorization") == f"Bearer {slack_token}" for c in slack_server.calls)
    broadcast = [c for c in posts if str(c.body.get("reply_broadcast")).lower() == "true"]
    assert any("Rolling back" in c.body.get("text", "") for c in broadcast)
    assert "chat.update" in slack_server.methods()  # the header follows the rollout's status
    assert slack_token not in json.dumps(report, default=str)
    assert slack_token not in caplog.text


def test_slack_outage_never_holds_up_the_rollback(slack_server, slack_token):
    slack_server.fail_next(10_000, status=500)
    # Retries kept short so the test is quick; the production default is 3 with backoff.
    notifier = SlackBotNotifier(slack_token, "#engineering", base_url=slack_server.url, max_retries=1,
                                retry_backoff=0.05)
    report = rehearse_with_slack(slack_server, notifier=notifier)
    assert report["outcome"] == "rolled_back"
    assert report["rollback"]["ok"]
    undelivered = [n for n in report["notifications"] if not n["delivered"]]
    assert undelivered and all(n["error"] for n in undelivered)
