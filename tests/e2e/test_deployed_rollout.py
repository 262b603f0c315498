"""The README's real-run path with a registered deployment, end to end: `prefect deploy --all`,
a `prefect worker start` polling the pool, `phasegate checklist` confirmed, then a run of the
`progressive-rollout` deployment (as the UI's Run button or `prefect deployment run` starts
one) against the emulator, paused for approval and approved **by mouse** in the Prefect UI.

Everything that runs the rollout is a user's process configured only by its environment: the
worker, and the flow-run process the worker starts from the deployment's pull step. The
rollout therefore finds its code through `prefect.yaml`'s build/pull steps, its cluster and
Prometheus through PHASEGATE_* settings, and its approval through the Prefect API, as on a
laptop driving a real cluster. The plan is real-clock-approval.yaml: wall-clock soaks of seconds.

The pool and deployment names are this test's own, and `prefect.yaml`'s event triggers are
dropped from its copy: the session's Prefect server is shared, and another test's
`phasegate.alert.firing` event must not start a runbook on this test's worker.
"""

from __future__ import annotations

import contextvars
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world
from tests.e2e.test_checklist_then_run import _exit_code, _paused, _phasegate
from tests.e2e.test_ui_approval import ARTIFACTS, CRITERION, browser, chromium  # noqa: F401
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
PLAN = "tests/plans/real-clock-approval.yaml"  # relative: the deployment's flow run resolves it in ROOT
APPROVER = "Ada Lovelace"
COMMENT = "Canary clean on the dashboard; approved from the Runs page."
PREFECT = str(Path(sys.executable).parent / "prefect")


def _prefect_yaml(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """prefect.yaml with this test's pool and deployment names, its plan, and no event triggers."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = f"deployed-{uuid.uuid4().hex[:8]}"
    names: dict[str, str] = {}
    for deployment in spec["deployments"]:
        names[deployment["name"]] = f"{deployment['name']}-{pool}"
        deployment["name"] = names[deployment["name"]]
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool}
        deployment.pop("triggers", None)
        deployment.pop("schedules", None)
        if "plan_path" in (deployment.get("parameters") or {}):
            deployment["parameters"]["plan_path"] = PLAN
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, pool, names


def _cli(*args: str, env: dict[str, str], log: Path, timeout: float = 120) -> str:
    result = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def answer_approval_form(page: Any, url: str, *, decision: str, approver: str, comment: str,
                         criteria: list[str]) -> None:
    """Open the paused run's page, press Resume, switch the decision and criteria on by mouse,
    fill in who and why, and submit, as a person does."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator(".state-badge").first).to_contain_text("Paused")
    page.locator("button", has_text="Resume").click()
    dialog = page.locator(".p-modal__card")

    def field(label: str) -> Any:
        exact = re.compile(rf"^\s*{re.escape(label)}( \(Optional\))?\s*$")  # not "Approve" for "Approver"
        return dialog.locator(".schema-form-property").filter(
            has=page.locator(".schema-form-property__label", has_text=exact))

    for label in [decision, *criteria]:
        switch = field(label).locator("[role=switch]")
        switch.click()
        expect(switch).to_have_attribute("aria-checked", "true")
    field("Approver").locator("textarea").fill(approver)
    field("Comment").locator("textarea").fill(comment)
    dialog.get_by_role("button", name="Submit").click()
    # A loaded server takes a while to accept a resume; a refused one keeps the dialog open,
    # and its message is in the screenshot.
    try:
        expect(dialog).to_be_hidden(timeout=60_000)
    except AssertionError:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "deployed-approval-refused.png"), full_page=True)
        raise


def _final(server: PrefectServer, run_id: str, timeout: float, worker_log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=5).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return dict(run)
        time.sleep(0.5)
    pytest.fail(f"the deployed rollout did not finish in {timeout:.0f} s:\n{worker_log.read_text()[-4000:]}")


def test_a_deployed_progressive_rollout_is_approved_by_mouse_and_promotes(
        prefect_server: PrefectServer, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect
    from prefect.flow_runs import resume_flow_run

    from flows.checklist import checklist_form

    started = time.monotonic()
    plan = load_plan(ROOT / PLAN)
    prefect_yaml, pool, names = _prefect_yaml(tmp_path)
    notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    with world(plan, speed=1.0, notifier=notifier) as w:
        kubeconfig = w.emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace="bodhi")
        env = {k: v for k, v in prefect_server.env().items()
               if not k.startswith(("SLACK_", "PHASEGATE_", "KUBECONFIG"))}
        env.update(PHASEGATE_KUBECONFIG=str(kubeconfig), PHASEGATE_PROMETHEUS_URL=w.prometheus.url,
                   PHASEGATE_APPROVAL_POLL_SECONDS="1", PREFECT_CLI_PROMPT="false",
                   PREFECT_HOME=str(tmp_path / "prefect-home"))

        _cli("work-pool", "create", pool, "--type", "process", env=env, log=tmp_path / "pool.log")
        # The README's command, from the project directory: the build step records it as where
        # the worker's flow runs find phasegate (no PHASEGATE_HOME is set anywhere here).
        out = _cli("deploy", "--all", "--prefect-file", str(prefect_yaml), env=env, log=tmp_path / "deploy.log")
        assert names["progressive-rollout"] in out

        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as sink:
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool], cwd=tmp_path, env=env,
                                      stdout=sink, stderr=subprocess.STDOUT)
        try:
            log = tmp_path / "checklist.log"
            checklist = _phasegate("checklist", PLAN, "--image", w.image, "--timeout", "120", env=env, log=log)
            checklist_run = _paused(prefect_server, "pre-deployment-checklist", checklist, log)
            items = [name for name in checklist_form(plan).model_fields if name not in ("confirmed_by", "metadata")]
            answer = {**{name: True for name in items}, "confirmed_by": APPROVER}
            with prefect_api_at(prefect_server.api_url):
                # Playwright leaves an event loop in this thread, where Prefect's sync API
                # would hand back an un-awaited coroutine: answer from a thread of its own, in
                # this context (the settings prefect_api_at put in force).
                ctx = contextvars.copy_context()
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(ctx.run, resume_flow_run, checklist_run, run_input=answer).result(timeout=60)
            assert _exit_code(checklist, 60, log) == 0, log.read_text()

            # `prefect deployment run`, as the Run button does: the image is the only parameter a
            # person gives; the plan comes from the deployment.
            out = _cli("deployment", "run", f"progressive-rollout/{names['progressive-rollout']}",
                       "--param", f"image={w.image}", env=env, log=tmp_path / "run.log")
            run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)

            deadline = time.monotonic() + 150
            while httpx.get(f"{prefect_server.api_url}/flow_runs/{run_id}", timeout=5).json()["state"]["type"] != "PAUSED":
                assert time.monotonic() < deadline, f"never paused:\n{worker_log.read_text()[-4000:]}"
                assert worker.poll() is None, f"worker exited:\n{worker_log.read_text()[-4000:]}"
                time.sleep(0.5)

            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(15_000)
            answer_approval_form(page, f"{prefect_server.url}/runs/flow-run/{run_id}", decision="Approve",
                                 approver=APPROVER, comment=COMMENT, criteria=[CRITERION])

            final = _final(prefect_server, run_id, 150, worker_log)
            assert (final["state"]["type"], final["state"]["name"]) == ("COMPLETED", "Promoted"), final["state"]
            assert {f"plan:{plan.name}", "outcome:promoted"} <= set(final["tags"])
            page.reload()
            expect(page.locator(".state-badge").first).to_contain_text("Promoted")
            stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
        finally:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
    assert any(c["image"] == w.image for c in stable["spec"]["template"]["spec"]["containers"])
    annotations = stable["metadata"]["annotations"]
    assert annotations["phasegate.dev/phase-state"] == "promoted"
    assert annotations["phasegate.dev/checklist-confirmed"] == f"{plan.name}:{w.image} by {APPROVER}"
    print(f"\ndeployed, checklist confirmed, approved by mouse, promoted in {time.monotonic() - started:.1f} s")
