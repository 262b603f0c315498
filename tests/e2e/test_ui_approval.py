"""The approval pause, answered in the Prefect UI by a person in a browser.

A real ``prefect server start`` serves the API and the UI; a rehearsal rollout
(``approve="ui"``: nothing answers for it) runs against it until the canary's approval
pause; headless Chromium opens the run's page as the link in the notification does, reads
the gate evidence in the Resume dialog (every column inside the dialog), submits without a
decision (refused by the server), then approves with the mouse alone — a click on the
Approve switch and on the criterion's switch — and submits. The rollout must then run the
next phase and end promoted, with the approver and comment in its report and in the
approval artifact on the run.
"""

from __future__ import annotations

import json
import re
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

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
PAUSE_TIMEOUT = 180.0  # world start (~8 s) + canary soak floors (~8 s), with room for a slow machine
FINISH_TIMEOUT = 120.0  # the full phase's soak floors, the promotion, the subprocess exiting


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
        expect(evidence.locator("th").last).to_have_text("value vs bound")
        # Readable, not clipped: Prefect's markdown tables neither wrap nor show a scrollbar,
        # so a table wider than its box is silently cut off on the right. Every cell must lie
        # inside the box, and the table must need no scrolling.
        box_of = evidence.evaluate("t => { const r = t.parentElement.getBoundingClientRect();"
                                   " return [r.x, r.x + r.width, t.scrollWidth, t.parentElement.clientWidth]; }")
        left, right, width, room = box_of
        assert width <= room, f"the evidence table is {width} px wide in {room} px"
        cells = evidence.locator("th, td")
        for i in range(cells.count()):
            box = cells.nth(i).bounding_box()
            assert box is not None and left <= box["x"] and box["x"] + box["width"] <= right + 0.5, (
                cells.nth(i).inner_text(), box, (left, right))
        lock = evidence.locator("tr").filter(has_text="lock-success")
        expect(lock.locator("td").last).to_have_text(re.compile(r"^\s*[\d.e+-]+ > 0\.999\s*$"))

        def field(label: str) -> Any:
            exact = re.compile(rf"^\s*{re.escape(label)}( \(Optional\))?\s*$")  # not "Approve" for "Approver"
            return dialog.locator(".schema-form-property").filter(
                has=page.locator(".schema-form-property__label", has_text=exact)
            )

        # Nothing is decided, and nothing is labelled optional, before a person acts.
        approve, reject = field("Approve").locator("[role=switch]"), field("Reject").locator("[role=switch]")
        expect(approve).to_have_attribute("aria-checked", "false")
        expect(reject).to_have_attribute("aria-checked", "false")
        expect(field(CRITERION)).to_contain_text("Required to approve")
        # Only the comment may be left out.
        expect(dialog.locator(".schema-form-property__label", has_text="(Optional)")).to_have_text(
            [re.compile(r"^\s*Comment \(Optional\)\s*$")])
        field("Approver").locator("textarea").fill(APPROVER)
        field("Comment").locator("textarea").fill(COMMENT)
        # A resume with no decision is refused by the Prefect server: the dialog stays open.
        dialog.get_by_role("button", name="Submit").click()
        refusal = page.get_by_text("Validation failed for field 'approve'").first
        expect(refusal).to_be_visible()
        print(f"\nno decision, as the server refused it: {refusal.inner_text()}")
        expect(dialog).to_be_visible()
        # The decision and the criterion, by mouse: each a switch a click turns on.
        approve.click()
        expect(approve).to_have_attribute("aria-checked", "true")
        toggle = field(CRITERION).locator("[role=switch]")
        toggle.click()
        expect(toggle).to_have_attribute("aria-checked", "true")
        expect(reject).to_have_attribute("aria-checked", "false")

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
    # The decision is an artifact on the run, read back from the server the UI shows.
    artifacts = httpx.post(f"{prefect_server.api_url}/artifacts/filter", timeout=10, json={
        "artifacts": {"flow_run_id": {"any_": [report["flow_run_id"]]}, "type": {"any_": ["markdown"]}}}).json()
    (record,) = [a["data"] for a in artifacts if (a["key"] or "").endswith("-canary-approval")]
    assert f"**Decided by:** {APPROVER}" in record and f"**Comment:** {COMMENT}" in record
    assert f"- ✅ {CRITERION}" in record and "**Prefect account that sent it:**" in record
    total = time.monotonic() - started
    print(f"paused after {paused_after:.1f} s; approved in the UI and promoted after {total:.1f} s")
