"""The approval pause, answered in the Prefect UI by a person in a browser.

A real ``prefect server start`` serves the API and the UI; a rehearsal rollout
(``approve="ui"``: nothing answers for it) runs against it until the canary's approval
pause; headless Chromium opens the run's page as the link in the notification does, reads
the gate evidence in the Resume dialog, fills the form and submits. The rollout must then
run the next phase and end promoted, with the approver and comment in its report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.common import require_binary
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "tests" / "plans" / "ui-approval.yaml"
ARTIFACTS = REPO / "reports" / "e2e"
CRITERION = "Keycloak audit logs show a single refresh per expiration"
APPROVER = "Grace Hopper"
COMMENT = "Canary looks clean; audit log checked by hand."
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PAUSE_TIMEOUT = 60.0  # world start (~8 s) + canary soak floors (~8 s), with room for a slow machine
FINISH_TIMEOUT = 60.0  # the full phase's soak floors, the promotion, the subprocess exiting


def _run_rehearsal(server: PrefectServer, report: Path, log: Path) -> subprocess.Popen[bytes]:
    """The rollout in its own process, configured only by its environment.

    Not a thread: the session's in-process test harness (tests/fixtures/prefect.py) may
    already have pointed this interpreter's Prefect settings at another API.
    """
    code = textwrap.dedent(f"""
        from phasegate.entry.rehearse import rehearse
        rehearse({str(PLAN)!r}, approve="ui", approval_floor=120.0, report_path={str(report)!r})
    """)
    # The rehearsal picks Slack from SLACK_* when set; this test talks to no Slack.
    env = {k: v for k, v in server.env().items() if not k.startswith("SLACK_")}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _paused_run(server: PrefectServer, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The rollout's flow run once it is paused (the rehearsal does not hand out the run id)."""
    query = {
        "flows": {"name": {"any_": ["progressive-rollout"]}},
        "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
    }
    deadline = time.monotonic() + PAUSE_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the rehearsal exited ({proc.returncode}) before pausing:\n{_tail(log)}")
        runs = httpx.post(f"{server.api_url}/flow_runs/filter", json=query, timeout=5).json()
        if runs:
            return dict(runs[0])
        time.sleep(0.25)
    pytest.fail(f"no paused rollout after {PAUSE_TIMEOUT:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@pytest.fixture
def chromium() -> str:
    # Fails, not skips, without the Debian package: see require_binary.
    return require_binary("chromium")


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our own.
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1500},
        )
        try:
            yield context
        finally:
            context.close()


def test_approve_in_the_prefect_ui(prefect_server: PrefectServer, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    report_path, log = tmp_path / "report.json", tmp_path / "rehearsal.log"
    proc = _run_rehearsal(prefect_server, report_path, log)
    try:
        run = _paused_run(prefect_server, proc, log)
        paused_after = time.monotonic() - started

        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(15_000)
        # The address the rollout's notifications link to (Rollout.ui_link); Prefect serves its
        # V1 UI there, so that is the one an approver following the link sees.
        page.goto(f"{prefect_server.url}/runs/flow-run/{run['id']}")
        expect(page.locator(".state-badge").first).to_contain_text("Paused")
        page.locator("button", has_text="Resume").click()

        dialog = page.locator(".p-modal__card")
        # The pause description: what approving and rejecting do, the criteria, the gate evidence.
        expect(dialog).to_contain_text("canary: advance")
        expect(dialog).to_contain_text("Approving starts full")
        expect(dialog).to_contain_text("Rejecting rolls back with canary_only")
        expect(dialog).to_contain_text("Gate evidence (last round)")
        evidence = dialog.locator("table")
        for gate in ("token-not-active", "error-rate-increase", "latency-within-range", "lock-success"):
            expect(evidence).to_contain_text(gate)
        expect(evidence).to_contain_text("Successful")

        def field(label: str) -> Any:
            return dialog.locator(".schema-form-property").filter(
                has=page.locator(".schema-form-property__label", has_text=label)
            )

        choose_option(page, field("Decision"), "approve")
        field("Approver").locator("textarea").fill(APPROVER)
        field("Comment").locator("textarea").fill(COMMENT)
        toggle = field(CRITERION).locator("[role=switch]")
        toggle.click()
        expect(toggle).to_have_attribute("aria-checked", "true")
        expect(field("Decision")).to_contain_text("approve")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "ui-approval-form.png"
        dialog.screenshot(path=str(shot))
        page.screenshot(path=str(tmp_path / "ui-approval-page.png"), full_page=True)
        print(f"\nscreenshot of the filled approval form: {shot}")

        dialog.get_by_role("button", name="Submit").click()
        expect(dialog).to_be_hidden()

        try:
            proc.wait(timeout=FINISH_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the rollout did not finish {FINISH_TIMEOUT:.0f} s after the approval:\n{_tail(log)}")
        assert proc.returncode == 0, _tail(log)

        # What the person sees afterwards: the run finished.
        page.reload()
        expect(page.locator(".state-badge").first).to_contain_text("Promoted")
        page.screenshot(path=str(ARTIFACTS / "ui-approval-after.png"), full_page=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    report = json.loads(report_path.read_text())
    assert report["outcome"] == "promoted", report.get("halted") or report.get("rollback")
    assert [p["name"] for p in report["phases"]] == ["canary", "full"]
    assert [p["outcome"] for p in report["phases"]] == ["advance", "advance"]
    (approval,) = report["approvals"]
    assert approval["phase"] == "canary"
    assert approval["decision"] == "approve"
    assert approval["approver"] == APPROVER
    assert approval["comment"] == COMMENT
    assert approval["criteria"] == {CRITERION: True}
    assert approval["refused"] == []
    assert report["approvals_sent"] == []  # nobody but the browser answered
    total = time.monotonic() - started
    print(f"paused after {paused_after:.1f} s; approved in the UI and promoted after {total:.1f} s")


def choose_option(page: Any, field: Any, option: str) -> None:
    """Pick ``option`` in a schema-form select.

    Prefect 3.9.1's V1 Resume dialog does not open an enum's option list on a click: the
    list's search box takes focus, the dialog's focus trap takes it back, the list closes
    (headless and headed Chromium alike). The keyboard opens it and keeps it open, so a
    person can still choose; the test does what such a person does, and says so.
    """
    control = field.locator("button.p-select-button__control")
    control.click()
    options = page.get_by_role("option", name=option, exact=True)
    try:
        options.wait_for(state="visible", timeout=1_500)
    except Exception:
        print("\nnote: the Decision list did not open on a click; opening it with the keyboard")
        control.focus()
        control.press("ArrowDown")
        options.wait_for(state="visible", timeout=5_000)
    options.click()

