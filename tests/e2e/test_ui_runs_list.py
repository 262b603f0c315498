"""The Runs list of the Prefect UI, as a person scans it after three rehearsals.

A real ``prefect server start`` (API + UI); three ``phasegate rehearse`` commands, run as a
user runs them and at once, each with its own target so none waits for another's lock: one
promoted, one rolled back by a trigger, one halted (held, and nobody answers). Each command's
exit code must agree with the state its flow run ended in; headless Chromium must show the
three apart in the Runs list; and the Logs of a rehearsed run hold the rollout's own INFO
lines while the terminal shows none of them.

The three runs are made once for the module (~60–90 s on a loaded 2-core machine, most of it
three worlds starting), and each test reads them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks import evidence
from tests.e2e.test_ui_approval import browser, chromium  # noqa: F401 - the Chromium fixtures
from tests.fixtures.prefect_server import PrefectServer, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "tests/plans/one-phase.yaml"
SCENARIOS = REPO / "tests/plans/scenarios"
ARTIFACTS = REPO / "reports" / "e2e"
REHEARSAL_TIMEOUT = 200.0  # three worlds starting at once on 2 shared cores
# outcome: phasegate rehearse options, exit code, state type, state name
OUTCOMES: dict[str, tuple[list[str], int, str, str]] = {
    "promoted": ([], 0, "COMPLETED", "Promoted"),
    "rolled_back": (["--scenario", str(SCENARIOS / "token-not-active-at-full.yaml")], 3, "FAILED", "Rolled back"),
    "halted": (["--scenario", str(SCENARIOS / "lock-timeouts-at-full.yaml"), "--approve", "timeout@full"],
               4, "FAILED", "Halted"),
}


@dataclass
class Rehearsed:
    """One ``phasegate rehearse`` as run: its exit code, output, report and flow run."""

    image: str
    namespace: str
    returncode: int
    output: str
    report: dict[str, Any]
    flow_run: dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_server(tmp_path_factory) as prefect:
        yield prefect


def _plan_for(outcome: str, into: Path) -> tuple[Path, str]:
    """The short plan with a target of its own: a lock per target, so the three run at once."""
    namespace = f"runs-{outcome.replace('_', '-')}"
    text = PLAN.read_text().replace("name: one-phase", f"name: {namespace}")
    text = text.replace("production: bodhi}", f"production: {namespace}}}")
    path = into / f"{namespace}.yaml"
    path.write_text(text)
    return path, namespace


@pytest.fixture(scope="module")
def rehearsed(server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rehearsed]:
    work = tmp_path_factory.mktemp("runs-list")
    phasegate = Path(sys.executable).with_name("phasegate")
    # Only the server's settings: no Slack, and none of the test process's Prefect logging settings.
    env = {k: v for k, v in server.env().items()
           if not k.startswith("SLACK_") and not k.startswith("PREFECT_LOGGING_")}
    started: dict[str, tuple[subprocess.Popen[str], Path, str, str]] = {}
    for outcome, (options, _code, _type, _name) in OUTCOMES.items():
        plan, namespace = _plan_for(outcome, work)
        image = f"registry.example.com/bodhi/bodhi-server:1.6.0-{namespace}"
        report = work / f"{outcome}.json"
        cmd = [str(phasegate), "rehearse", str(plan), "--speed", "172800", "--image", image,
               "--report", str(report), *options]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[outcome] = (proc, report, image, namespace)
    deadline = time.monotonic() + REHEARSAL_TIMEOUT
    runs = {}
    try:
        for outcome, (proc, report, image, namespace) in started.items():
            try:
                output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"phasegate rehearse for {outcome} did not finish in {REHEARSAL_TIMEOUT:.0f} s")
            assert report.exists(), f"{outcome}: no report (exit {proc.returncode}):\n{output[-3000:]}"
            loaded = json.loads(report.read_text())
            flow_run = httpx.get(f"{server.api_url}/flow_runs/{loaded['flow_run_id']}", timeout=10).json()
            runs[outcome] = Rehearsed(image, namespace, proc.returncode, output, loaded, flow_run)
    finally:
        for proc, *_ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return runs


@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_rehearse_exit_code_agrees_with_the_runs_final_state_and_tags(rehearsed: dict[str, Rehearsed],
                                                                      outcome: str) -> None:
    _options, code, state_type, state_name = OUTCOMES[outcome]
    run = rehearsed[outcome]
    assert run.report["outcome"] == outcome, run.output[-3000:]
    assert run.returncode == code, run.output[-3000:]
    assert (run.flow_run["state"]["type"], run.flow_run["state"]["name"]) == (state_type, state_name)
    assert set(run.flow_run["tags"]) == {f"plan:{run.namespace}", f"target:{run.namespace}/bodhi-server",
                                         f"outcome:{outcome}"}


def test_the_runs_list_shows_promoted_rolled_back_and_halted_apart(
    server: PrefectServer, rehearsed: dict[str, Rehearsed], browser: Any,  # noqa: F811 - a fixture
) -> None:
    from playwright.sync_api import expect

    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{server.url}/runs")
    seen = {}
    for outcome, run in rehearsed.items():
        _options, _code, state_type, state_name = OUTCOMES[outcome]
        row = page.locator(".flow-run-list-item").filter(
            has=page.locator(".flow-run-bread-crumbs__flow-run-link", has_text=f"rollout {run.image}"))
        badge = row.locator(".state-badge")
        expect(badge).to_have_text(state_name)
        # The badge's colour is its state type's: green for Promoted, red for the other two.
        expect(badge).to_have_class(re.compile(rf"\bstate--{state_type.lower()}\b"))
        expect(row.locator(".state-list-item__tags")).to_contain_text(f"plan:{run.namespace}")
        seen[outcome] = badge.inner_text()
    assert len(set(seen.values())) == 3, seen
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-runs-list.png"), full_page=True)


def test_a_rehearsed_runs_logs_hold_the_rollouts_info_lines_and_the_terminal_does_not(
    server: PrefectServer, rehearsed: dict[str, Rehearsed],
) -> None:
    run = rehearsed["promoted"]
    parent = run.report["flow_run_id"]
    phases = httpx.post(f"{server.api_url}/flow_runs/filter", timeout=10,
                        json={"flow_runs": {"parent_flow_run_id": {"any_": [parent]}}}).json()
    assert [p["name"] for p in phases] == [f"full {run.image.rsplit('/', 1)[1]}"]
    expected = {
        parent: f"Promoted: {run.image} promoted to 100% of {run.namespace}/bodhi-server",  # the rollout flow's own
        phases[0]["id"]: f"setting {run.namespace}/bodhi-server container bodhi-server to {run.image}",  # its deploy
    }
    # The API handler sends logs in batches; the last may land a moment after the command exits.
    deadline = time.monotonic() + 30
    while True:
        query = {"logs": {"flow_run_id": {"any_": list(expected)}, "level": {"ge_": 20, "le_": 20}}, "limit": 200}
        logs = httpx.post(f"{server.api_url}/logs/filter", json=query, timeout=10).json()
        found = {run_id for run_id, line in expected.items()
                 if any(log["flow_run_id"] == run_id and log["message"] == line for log in logs)}
        if found == set(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == set(expected), [log["message"] for log in logs]
    # ... and none of them on the terminal, which shows the live view and warnings only.
    assert "| INFO" not in run.output, run.output[-3000:]
    assert not any(line in run.output for line in expected.values()), run.output[-3000:]


def _artifact(server: PrefectServer, flow_run_ids: list[str], key: str) -> dict[str, Any]:
    found = httpx.post(f"{server.api_url}/artifacts/filter", timeout=10,
                       json={"artifacts": {"flow_run_id": {"any_": flow_run_ids}}}).json()
    matching = [a for a in found if a["key"] == key]
    assert len(matching) == 1, [a["key"] for a in found]
    return matching[0]


def test_the_rolled_back_runs_gates_table_and_summary_chart_show_in_the_artifact_pages(
    server: PrefectServer, rehearsed: dict[str, Rehearsed], browser: Any,  # noqa: F811 - a fixture
) -> None:
    from playwright.sync_api import expect

    run = rehearsed["rolled_back"]
    parent = run.report["flow_run_id"]
    phases = httpx.post(f"{server.api_url}/flow_runs/filter", timeout=10,
                        json={"flow_runs": {"parent_flow_run_id": {"any_": [parent]}}}).json()
    rollout = run.report["rollout"]
    gates = _artifact(server, [p["id"] for p in phases if p["name"].startswith("full ")],
                      evidence._key(rollout, "full", "gates"))
    summary = _artifact(server, [parent], evidence._key(rollout, "summary"))
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{server.url}/artifacts/artifact/{gates['id']}")
    table = page.locator("table").first
    expect(table.locator("th").filter(has_text="token-not-active")).to_have_count(1)
    # Newest round first, and it is the one that rolled back, marked.
    expect(table.locator("tbody tr").first).to_contain_text("✗ Failed")
    page.screenshot(path=str(ARTIFACTS / "ui-gates-table.png"), full_page=True)
    page.goto(f"{server.url}/artifacts/artifact/{summary['id']}")
    expect(page.get_by_text("rolled back").first).to_be_visible()
    chart = page.locator(".markdown-renderer svg")
    expect(chart).to_have_count(1)  # one phase, one chart: a row per gate with its bound
    expect(chart.locator("polyline")).to_have_count(len(run.report["phases"][0]["rounds"][0]))
    expect(chart.locator("line[stroke-dasharray]").first).to_be_attached()
    page.screenshot(path=str(ARTIFACTS / "ui-rollout-summary.png"), full_page=True)
