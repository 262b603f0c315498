"""From a clean state, the README's "Running for real" commands, in its order: `phasegate doctor
--plan`, then `phasegate run` — refused until the checklist is confirmed —, `phasegate checklist
PLAN --image IMAGE`, which waits for a person, who confirms it (through the Prefect API, as the
UI form's Submit does), and `phasegate run` again, which rolls out to 100 %.

Every command runs as a user runs it: a subprocess configured only by its environment
(PHASEGATE_KUBECONFIG at the emulator, PHASEGATE_PROMETHEUS_URL at the loopback Prometheus,
PREFECT_API_URL at a brand-new `prefect server start`, which has no concurrency limit yet), on
the wall clock — hence a plan whose soaks are seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world
from tests.fixtures.prefect import prefect_api_at
from tests.fixtures.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "tests/plans/real-clock.yaml"
APPROVER = "alice"


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


def test_checklist_then_run_from_a_clean_state(prefect_server: PrefectServer, tmp_path: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.checklist import checklist_form

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
        checklist = _phasegate("checklist", str(PLAN), "--image", w.image, "--timeout", "120", env=env, log=log)
        run_id = _paused(prefect_server, "pre-deployment-checklist", checklist, log)
        items = [name for name in checklist_form(plan).model_fields if name not in ("confirmed_by", "metadata")]
        assert plan.checklist is not None and len(items) == len(plan.checklist.items)
        answer = {**{name: True for name in items}, "confirmed_by": APPROVER}
        with prefect_api_at(prefect_server.api_url):
            resume_flow_run(run_id, run_input=answer)
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
