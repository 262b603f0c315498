"""Issue 8, secrets: the Slack token and the Prometheus password never appear in logs,
artifacts, reports, notifications or exceptions — checked over a whole rollout with real parts.

The world's Prometheus demands basic auth (its own ``--web.config.file``); the rollout's
metrics provider and Slack bot are configured only through the environment a production
worker reads (``PHASEGATE_PROMETHEUS_*``, ``SLACK_*``, via ``PhasegateSettings``); Slack is
the loopback server, accepting only this test's token. The scenario rolls the canary back,
so gate rounds, the rollback subflow, critical notifications and their error paths all run.

Then every place a secret could surface is searched for the token, the password and the
base64 of ``user:password`` (what a basic-auth header carries): the Prefect API's logs, flow
and task runs and artifacts, the report and the file it is written to, the Prometheus
server's files, Python log records, the process's stdout/stderr, and what Slack received.
The secrets are random per run, so a substring search means something. First, a wrong
password and a wrong token must fail the preflight with an error that names both problems
without repeating either; they are searched for everywhere too.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterTimestamp,
)
from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

from flows.rollout import PreflightFailed
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.entry.rehearse import run_in, write_report
from phasegate.entry.settings import PhasegateSettings
from phasegate.notify import Notifier
from phasegate.plan import RolloutPlan, load_plan
from phasegate.rehearsal.slack_server import SlackServer
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SPEED = 172800.0  # two plan days per wall second
USER = "phasegate-e2e"
PAGE = 200  # the Prefect API's default maximum page size

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


@pytest.fixture
def slack_token() -> str:
    """Overrides the fixture the ``slack_server`` accepts: a token nothing else contains."""
    return f"xoxb-{secrets.token_hex(16)}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No PHASEGATE_* or SLACK_* of the machine's: only what this test configures."""
    for name in list(os.environ):
        if name.startswith(("PHASEGATE_", "SLACK_")):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture
def terminal(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """``capfd``, with Prefect's console lines in it: what a person would see in a terminal.

    Prefect's own console handler prints to the object that was ``sys.stderr`` when ``import
    prefect`` configured logging (pytest's global capture then), which ``capfd`` never sees;
    so for the test a second one, formatted alike, prints to file descriptor 2 itself."""
    root = logging.getLogger()
    fd2 = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - closed below
    console = PrefectConsoleHandler(stream=fd2)
    prefects = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    if prefects:
        console.setFormatter(prefects[0].formatter)
    root.addHandler(console)
    try:
        yield capfd
    finally:
        root.removeHandler(console)
        fd2.close()


def production_adapters(monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan, prometheus_url: str, password: str,
                        slack: SlackServer, token: str) -> tuple[PrometheusProvider, Notifier]:
    """The environment a production worker is given, and the metrics provider and notifier
    ``context_from_settings`` builds from it."""
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", prometheus_url)
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_USERNAME", USER)
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_PASSWORD", password)
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", token)
    monkeypatch.setenv("SLACK_CHANNEL", "#engineering")  # the plan names no channel
    settings = PhasegateSettings()
    return PrometheusProvider.from_settings(settings.prometheus_settings()), settings.plan_notifier(plan)


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def exception_text(exc: BaseException) -> str:
    """str, repr and the formatted traceback of ``exc`` and of every exception chained to it,
    suppressed context included: a debugger or a careless handler would show those too."""
    parts, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), "".join(traceback.format_exception(e))]
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return "\n".join(parts)


def every_page(read: Callable[..., list[Any]], **filters: Any) -> list[str]:
    """All rows a Prefect ``read_*`` call returns, page by page, each as its JSON."""
    rows: list[str] = []
    while True:
        page = read(**filters, limit=PAGE, offset=len(rows))
        rows += [row.model_dump_json() for row in page]
        if len(page) < PAGE:
            return rows


def prefect_records(since: datetime) -> dict[str, list[str]]:
    """Everything the Prefect API holds from ``since`` on: logs, flow runs, task runs, artifacts."""
    APILogHandler().flush()  # logs are shipped in batches by a background worker
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        ours = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs]))
        return {
            "flow_runs": [r.model_dump_json() for r in runs],
            "task_runs": every_page(client.read_task_runs, flow_run_filter=ours),
            "artifacts": every_page(client.read_artifacts, flow_run_filter=ours),
            # Every log since, not only our runs': whatever logged a secret, it was us.
            "logs": every_page(client.read_logs, log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=since))),
        }


def test_no_secret_surfaces_anywhere_in_a_rollout_that_rolls_back(
    clean_env: pytest.MonkeyPatch, slack_server: SlackServer, slack_token: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, terminal: pytest.CaptureFixture[str],
) -> None:
    # Python records at every level, and Prefect's run loggers at INFO so the flows' own
    # progress lines are emitted and shipped to the API too, not only warnings.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="prefect")
    password = f"pw-{secrets.token_hex(16)}"
    wrong_password = f"wrong-{secrets.token_hex(16)}"
    wrong_token = f"xoxb-wrong-{secrets.token_hex(16)}"
    plan = load_plan(TWO_PHASE)
    since = datetime.now(UTC) - timedelta(seconds=1)
    started = time.monotonic()

    with world(plan, scenario="token-not-active", speed=SPEED, prometheus_auth=(USER, password),
               notifier=ConsoleNotifier(file=io.StringIO())) as w:
        # The server really demands the password: without it, a 401.
        anonymous = PrometheusProvider(w.prometheus.url, timeout=5)
        assert not anonymous.is_online()
        anonymous.close()

        # A wrong password and a wrong token: nothing deployed, and the preflight names both
        # problems without echoing either.
        metrics, notifier = production_adapters(clean_env, plan, w.prometheus.url, wrong_password, slack_server,
                                                wrong_token)
        with pytest.raises(PreflightFailed) as refused:
            run_in(w, TWO_PHASE, metrics=metrics, notifier=notifier)
        metrics.close()
        problems = str(refused.value)
        assert "refused the credentials (HTTP 401, auth=basic)" in problems, problems
        assert "Slack: auth.test: HTTP 200: invalid_auth" in problems, problems
        refused_text = exception_text(refused.value)

        # The right ones: the real rollout. The first Slack post fails through every retry,
        # so a failed delivery is logged and reported too.
        metrics, notifier = production_adapters(clean_env, plan, w.prometheus.url, password, slack_server,
                                                slack_token)
        slack_server.fail_next(4, status=500, method="chat.postMessage")
        try:
            report = run_in(w, TWO_PHASE, metrics=metrics, notifier=notifier)
        finally:
            metrics.close()
        server_files = {p.name: p.read_text(errors="replace") for p in w.prometheus.root.iterdir() if p.is_file()}

    # It authenticated: a token-not-active rollback needs the gate's data from Prometheus.
    assert report["outcome"] == "rolled_back", [(p["name"], p["reason"]) for p in report["phases"]]
    assert report["rollback"]["gates"] == ["token-not-active"]
    values = [m["value"] for p in report["phases"] for rnd in p["rounds"] for m in rnd]
    assert any(v is not None for v in values)
    # Slack heard of it, and a delivery failed on the way, as injected.
    assert any("Rolling back" in (m.text or "") for m in slack_server.messages)
    assert any(not n["delivered"] and "HTTP 500" in (n["error"] or "") for n in report["notifications"])
    # The tokens were sent where they belong, the request header, so they were in play.
    headers = [c.headers.get("Authorization") for c in slack_server.calls]
    assert f"Bearer {wrong_token}" in headers and f"Bearer {slack_token}" in headers

    report_file = write_report(report, tmp_path / "report.json")
    prefect = prefect_records(since)
    assert any('"progressive-rollout"' in r or "rollout " in r for r in prefect["flow_runs"])
    assert prefect["logs"] and prefect["artifacts"] and prefect["task_runs"]
    captured = terminal.readouterr()
    assert "refused the credentials" in captured.err  # the failed preflight's traceback was printed
    places = {
        **{f"prefect {kind}": "\n".join(rows) for kind, rows in prefect.items()},
        "report": json.dumps(report, default=str),
        "report file": report_file.read_text(),
        **{f"prometheus {name}": text for name, text in server_files.items()},
        "preflight exception": refused_text,
        "python log records": caplog.text + "\n".join(
            f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
        "slack requests": json.dumps([[c.path, c.body] for c in slack_server.calls], default=str),
        "slack messages": json.dumps([[m.text, m.blocks] for m in slack_server.messages], default=str),
    }
    secret_values = {
        "slack token": slack_token,
        "wrong slack token": wrong_token,
        "prometheus password": password,
        "wrong prometheus password": wrong_password,
        # What a basic-auth header carries: the password is readable in it.
        "basic-auth credentials": basic_auth(USER, password),
        "wrong basic-auth credentials": basic_auth(USER, wrong_password),
    }
    leaks = [f"{what} in {where}" for what, secret in secret_values.items()
             for where, text in places.items() if secret in text]
    assert not leaks, leaks
    print(f"secrets e2e: {time.monotonic() - started:.1f}s, {len(prefect['logs'])} Prefect logs, "
          f"{len(prefect['artifacts'])} artifacts, {len(slack_server.calls)} Slack calls searched")
