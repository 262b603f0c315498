"""A runbook launched from the Prefect UI by a person in a browser: the seed's "Immediate
Rollback" after promotion.

A real ``prefect server start`` serves the API and the UI, with the ``rollback-immediate``
deployment registered from prefect.yaml as ``prefect deploy`` registers it (its typed
parameters included). A rehearsal promotes the two-phase plan on the emulator; headless
Chromium then opens the deployment, types the plan path, the reason and who asks into the
Run form's fields, and submits. The flow run the UI created is executed as a worker executes
it — the deployment's entry flow, configured only by PHASEGATE_* settings — and must undo the
release on the emulator, verified, with the person's name on the release record.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

# The browser fixtures of the approval test: one way to start Chromium for every UI test.
from tests.e2e.test_ui_approval import ARTIFACTS, REPO, browser, chromium  # noqa: F401
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PLAN = REPO / "tests" / "plans" / "two-phase.yaml"
REQUESTER = "Katherine Johnson"
REASON = "token errors after promotion"


def _field(page: Any, label: str) -> Any:
    """The input of the schema form's property titled ``label``."""
    prop = page.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    )
    return prop.locator("textarea, input").first


def _type_into(page: Any, label: str, text: str) -> None:
    """Click the field, select what is there, type over it: what a person does."""
    box = _field(page, label)
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def test_launch_an_immediate_rollback_from_the_prefect_ui(
    prefect_server: PrefectServer, browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.entry.deployments import rollback_immediate
    from phasegate.entry.register import register
    from phasegate.entry.rehearse import run_in
    from phasegate.plan import load_plan
    from phasegate.rehearsal.world import world

    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)  # the approver's threads read the environment
    notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    with prefect_api_at(prefect_server.api_url, PREFECT_UI_URL=prefect_server.url), \
            world(load_plan(PLAN), speed=172800.0, notifier=notifier) as w:
        deployment_id = register(REPO / "prefect.yaml", ["rollback-immediate"])["rollback-immediate"]
        # The approver answers as soon as each pause shows; the floor only bounds how long a
        # busy server may take to show it (15 s, the default, timed out once on a loaded runner).
        # Nobody answers a hold: its own short floor ends a held run within the test's time,
        # with the reason in the assertion, not in a timeout.
        promoted = run_in(w, PLAN, approval_floor=120.0, hold_floor=10.0)
        assert promoted["outcome"] == "promoted", promoted.get("halted") or promoted.get("rollback")

        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(15_000)
        try:
            # Deployments → rollback-immediate → Run → Custom run, as a person clicks through.
            page.goto(f"{prefect_server.url}/deployments/deployment/{deployment_id}")
            expect(page.get_by_text("rollback-immediate").first).to_be_visible()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run", exact=True).click()
            expect(page).to_have_url(re.compile(r"/deployments/deployment/[^/]+/run"))
            _type_into(page, "plan_path", str(PLAN))
            _type_into(page, "reason", REASON)
            _type_into(page, "requested_by", REQUESTER)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-rollback-form.png"), full_page=True)
            page.get_by_role("button", name="Submit").click()
            # Prefect confirms with a toast: "<run name> scheduled to start now".
            expect(page.get_by_text("scheduled to start now").first).to_be_visible()
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-rollback-launched.png"), full_page=True)

        query = {"deployments": {"id": {"any_": [str(deployment_id)]}}}
        (launched,) = httpx.post(f"{prefect_server.api_url}/flow_runs/filter", json=query, timeout=5).json()
        typed = {k: launched["parameters"].get(k) for k in ("plan_path", "reason", "requested_by")}
        assert typed == {"plan_path": str(PLAN), "reason": REASON, "requested_by": REQUESTER}, launched["parameters"]
        assert launched["parameters"].get("image") is None  # left empty: the release the record names

        # The worker's part: the entry flow, configured by settings, runs the flow run the UI made.
        kubeconfig = w.emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace="bodhi")
        monkeypatch.setenv("PHASEGATE_KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", w.prometheus.url)
        for name in [k for k in os.environ if k.startswith("SLACK_")]:
            monkeypatch.delenv(name)
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(launched["id"])
        report = run_flow(rollback_immediate, flow_run=flow_run, parameters=flow_run.parameters, return_type="result")
        stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
        with get_client(sync_client=True) as client:
            final = client.read_flow_run(launched["id"]).state
    assert final is not None and final.is_completed(), final
    assert report["ok"] and report["strategy"] == "full_undo", report
    assert all(c["image"] != w.image for c in stable["spec"]["template"]["spec"]["containers"])
    annotations = stable["metadata"]["annotations"]
    assert annotations["phasegate.dev/phase-state"] == "rolled-back"
    assert REQUESTER in annotations["phasegate.dev/rollback"]
    print(f"\nlaunched from the UI; full undo verified in {report['wall_seconds']:.2f} s "
          f"(seed budget {report['budget_seconds']:.0f} s)")
