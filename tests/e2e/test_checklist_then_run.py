"""From a clean state, the README's "Running for real" commands, in its order: `phasegate doctor
--plan`, then `phasegate run` — refused until the checklist is confirmed —, `phasegate checklist
PLAN --image IMAGE`, which waits for a person, who confirms it in the Prefect UI (headless
Chromium: each item's label and automatic-check evidence readable, each switch clicked), and
`phasegate run` again, which rolls out to 100 %.

Every command runs as a user runs it: a subprocess configured only by its environment
(PHASEGATE_KUBECONFIG at the emulator, PHASEGATE_PROMETHEUS_URL at the loopback Prometheus,
PREFECT_API_URL at a brand-new `prefect server start`, which has no concurrency limit yet), on
the wall clock — hence a plan whose soaks are seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import RolloutPlan, load_plan
from phasegate.prove import plan_digest
from phasegate.rehearsal.world import world
from tasks.prefect_api import record_proof
from tests.e2e.test_ui_approval import browser, chromium  # noqa: F401 - the Chromium fixtures
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "tests/plans/real-clock.yaml"
APPROVER = "alice"
ARTIFACTS = ROOT / "reports" / "e2e"


def _phasegate(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "phasegate.entry.cli", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _exit_code(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"{' '.join(map(str, proc.args[3:]))} still running after {timeout:.0f} s:\n{log.read_text()}")


def _paused(server: PrefectServer, flow: str, proc: subprocess.Popen[bytes], log: Path) -> str:
    query = {"flows": {"name": {"any_": [flow]}}, "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{flow} exited ({proc.returncode}) before pausing:\n{log.read_text()}")
        runs = httpx.post(f"{server.api_url}/flow_runs/filter", json=query, timeout=5).json()
        if runs:
            return str(runs[0]["id"])
        time.sleep(0.25)
    pytest.fail(f"{flow} never paused:\n{log.read_text()}")


def confirm_in_the_ui(context: Any, server: PrefectServer, run_id: str, plan: RolloutPlan) -> None:
    """Confirm the checklist as a person does: in the Resume dialog, by mouse, reading each
    item's own words and its automatic check's result."""
    from playwright.sync_api import expect

    assert plan.checklist is not None
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{server.url}/runs/flow-run/{run_id}")
    page.locator("button", has_text="Resume").click()
    dialog = page.locator(".p-modal__card")
    card = dialog.bounding_box()
    assert card is not None
    for item in plan.checklist.items:
        # The item's own words as the label: nothing cut, nothing added ("(Optional)", "Item 3").
        label = page.locator(".schema-form-property__label", has_text=re.compile(rf"^\s*{re.escape(item.item)}\s*$"))
        prop = dialog.locator(".schema-form-property").filter(has=label)
        expect(prop.locator(".schema-form-property__label")).to_be_visible()
        switch = prop.locator("[role=switch]")
        if item.auto is not None:
            # The check's evidence sits under its item, inside the dialog: readable, not clipped.
            note = prop.locator(".schema-form-property__description")
            expect(note).to_contain_text("Automatic check passed:")
            box = note.bounding_box()
            assert box is not None and card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
            expect(switch).to_have_attribute("aria-checked", "true")  # pre-set from the passed check
        else:
            expect(switch).to_have_attribute("aria-checked", "false")
            switch.click()
            expect(switch).to_have_attribute("aria-checked", "true")
    expect(dialog.locator(".schema-form-property__label", has_text="(Optional)")).to_have_count(0)
    expect(dialog.locator(".schema-form-property__label", has_text=re.compile(r"^\s*Item \d"))).to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dialog.screenshot(path=str(ARTIFACTS / "ui-checklist-form.png"))
    dialog.locator(".schema-form-property").filter(has_text="Confirmed by").locator("textarea").fill(APPROVER)
    dialog.get_by_role("button", name="Submit").click()
    expect(dialog).to_be_hidden()


def test_checklist_then_run_from_a_clean_state(
        prefect_server: PrefectServer, browser: Any, tmp_path: Path) -> None:  # noqa: F811 - a fixture
    started = time.monotonic()
    plan = load_plan(PLAN)
    notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    with world(plan, speed=1.0, notifier=notifier) as w:
        kubeconfig = w.emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace="bodhi")
        env = {k: v for k, v in prefect_server.env().items() if not k.startswith(("SLACK_", "PHASEGATE_"))}
        env.update(PHASEGATE_KUBECONFIG=str(kubeconfig), PHASEGATE_PROMETHEUS_URL=w.prometheus.url,
                   PHASEGATE_APPROVAL_POLL_SECONDS="1")

        log = tmp_path / "doctor.log"
        assert _exit_code(_phasegate("doctor", "--plan", str(PLAN), env=env, log=log), 60, log) == 0, log.read_text()
        assert "all checks passed" in log.read_text()

        log = tmp_path / "run-refused.log"
        refused = _phasegate("run", str(PLAN), "--image", w.image, env=env, log=log)
        assert _exit_code(refused, 120, log) == 2, log.read_text()
        assert "checklist" in log.read_text() and "nothing was deployed" in log.read_text()

        log = tmp_path / "checklist.log"
        # The plan's "rollback tested" item reads a matched `rehearse --prove` of this plan's
        # content from the Prefect API. Proving is tested for real in tests/rehearsal/test_prove.py;
        # here the record is put there as the command records it, to keep this test's minutes
        # for the path it is about.
        with prefect_api_at(prefect_server.api_url):
            record_proof(plan.name, "# proof", {"plan_name": plan.name, "sha256": plan_digest(PLAN),
                                                "at": "2026-12-02T12:00:00+00:00", "matched": True, "cases": 4,
                                                "failed": []})
        checklist = _phasegate("checklist", str(PLAN), "--image", w.image, "--timeout", "120", env=env, log=log)
        run_id = _paused(prefect_server, "pre-deployment-checklist", checklist, log)
        confirm_in_the_ui(browser, prefect_server, run_id, plan)
        assert _exit_code(checklist, 60, log) == 0, log.read_text()
        assert "checklist confirmed" in log.read_text()

        log = tmp_path / "run.log"
        run = _phasegate("run", str(PLAN), "--image", w.image, env=env, log=log)
        assert _exit_code(run, 180, log) == 0, log.read_text()
        assert f"{plan.name}:{w.image}: promoted" in log.read_text()
        stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
    assert any(c["image"] == w.image for c in stable["spec"]["template"]["spec"]["containers"])
    annotations = stable["metadata"]["annotations"]
    assert annotations["phasegate.dev/phase-state"] == "promoted"
    assert annotations["phasegate.dev/checklist-confirmed"] == f"{plan.name}:{w.image} by {APPROVER}"
    limits = httpx.post(f"{prefect_server.api_url}/v2/concurrency_limits/filter", json={}, timeout=5).json()
    assert [(limit["name"], limit["active_slots"]) for limit in limits] == [("phasegate:bodhi.bodhi-server", 0)]
    print(f"\ndoctor, refused run, checklist, confirmed, promoted in {time.monotonic() - started:.1f} s")
