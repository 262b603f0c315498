"""The setup a real run needs, as a user meets it: ``prefect deploy`` and a worker, and
``phasegate run`` without a Prefect server to record a days-long rollout in.

Both run as subprocesses configured only by their environment, against the session's
Prefect API (tests/fixtures/prefect.py) and, for ``run``, the emulated cluster.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phasegate.entry import steps
from phasegate.rehearsal.cluster import ClusterEmulator

REPO = Path(__file__).resolve().parents[2]
SEED_PLAN = REPO / "deployments/plans/token-refresh-locking.yaml"
INVALID_PLAN = "tests/plans/invalid/missing-metric.yaml"  # relative: found only from the project directory
BIN = Path(sys.executable).parent


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The machine's environment without phasegate's or Prefect's settings, and a Prefect home
    of its own (no profile to supply PREFECT_API_URL behind the test's back)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHASEGATE_", "PREFECT_", "SLACK_", "KUBECONFIG"))}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra}


@pytest.mark.parametrize(("command", "refusal"), [
    ("run", "refusing to start, nothing was deployed: PREFECT_API_URL is not set"),
    ("checklist", "refusing to start the checklist: PREFECT_API_URL is not set"),
])
def test_without_prefect_api_url_run_and_checklist_refuse_naming_it_and_touch_nothing(
    emulator_kubeconfig: Path, seeded_cluster: ClusterEmulator, tmp_path: Path, command: str, refusal: str,
) -> None:
    def targets() -> list[dict]:
        return [seeded_cluster.store.get("apps/deployments", ns, "bodhi-server") for ns in ("bodhi-staging", "bodhi")]

    before = targets()
    env = _clean_env(tmp_path, PHASEGATE_KUBECONFIG=str(emulator_kubeconfig), PHASEGATE_PROMETHEUS_URL="http://127.0.0.1:9")
    result = subprocess.run(
        [str(BIN / "phasegate"), command, str(SEED_PLAN), "--image", "registry.example.com/bodhi/bodhi-server:1.6.0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert refusal in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing written: not the spec, not a checklist record in the annotations.
    assert targets() == before
    assert seeded_cluster.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None


def test_prefect_deploy_without_phasegate_home_runs_the_flow_from_the_directory_it_was_deployed_from(
    prefect_api: None, tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    env = _clean_env(tmp_path, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    # Another test of the session may have made the pool.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="phasegate", type="process"))
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "progressive-rollout"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("progressive-rollout/progressive-rollout")
        assert deployment.pull_steps == [{"phasegate.entry.steps.set_working_directory": {"created_in": str(REPO)}}]
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"plan_path": INVALID_PLAN, "image": "registry.example.com/bodhi/bodhi-server:1.6.0"})
    # A worker started anywhere else, with no PHASEGATE_HOME: the pull step must find the project.
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "phasegate", "--run-once"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.type.value == "FAILED", state
    # The entry flow ran, from the project directory: it read the plan by its relative path.
    assert "the plan is invalid, nothing was deployed" in (state.message or ""), state.message
    assert f"{INVALID_PLAN}:17" in worker.stdout + worker.stderr


def test_pull_step_prefers_phasegate_home_and_refuses_a_directory_without_phasegate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PHASEGATE_HOME", str(REPO))
    assert steps.set_working_directory(created_in=str(tmp_path)) == {"directory": str(REPO)}
    monkeypatch.setenv("PHASEGATE_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=rf"{tmp_path} \(PHASEGATE_HOME\) does not hold phasegate/entry/deployments.py"):
        steps.set_working_directory(created_in=str(REPO))
    monkeypatch.delenv("PHASEGATE_HOME")
    with pytest.raises(RuntimeError, match="set PHASEGATE_HOME to where phasegate is on this machine"):
        steps.set_working_directory(created_in=str(tmp_path))
    with pytest.raises(RuntimeError, match="PHASEGATE_HOME is not set and the deployment records no project directory"):
        steps.set_working_directory()
