"""The real kubectl against the emulator and a real kube-apiserver: the proof that the
emulator is faithful.

Each test runs the commands of the seed's runbook (or what an operator would type) on both
backends and asserts the resulting state read from the cluster, not kubectl's wording alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, SIDECAR, ClusterEmulator
from tests.fixtures.backends import Backend
from tests.fixtures.common import require_binary

Kubectl = Callable[..., str]


def _runner(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    binary = require_binary("kubectl")

    def run(*args: str, check: bool = True) -> str:
        result = subprocess.run(
            [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args],
            capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout + result.stderr

    return run


@pytest.fixture
def kubectl(backend_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """kubectl on the emulator, then on the real control plane."""
    return _runner(backend_kubeconfig, tmp_path)


@pytest.fixture
def emulator_kubectl(emulator_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """kubectl on the emulator only: for what needs a kubelet, which the real control plane lacks."""
    return _runner(emulator_kubeconfig, tmp_path)


def _image(backend: Backend, name: str = "bodhi-server") -> str:
    containers = backend.deployment(name)["spec"]["template"]["spec"]["containers"]
    return next(c["image"] for c in containers if c["name"] == "bodhi-server")


def test_get_lists_deployments_replicasets_and_configmaps_as_tables(kubectl: Kubectl) -> None:
    out = kubectl("get", "deploy,rs,cm")
    assert "deployment.apps/bodhi-server   10/10" in out
    assert out.count("replicaset.apps/bodhi-server-") == 3
    assert "configmap/bodhi-config" in out


def test_get_pods_by_label_selector_shows_running_pods(kubectl: Kubectl) -> None:
    # The stable Deployment carries no track label (a stock one has none): its pods are those without.
    out = kubectl("get", "pods", "-l", "app=bodhi-server,!track", "-o", "name")
    assert len(out.split()) == 10


def test_get_json_round_trips_the_object(kubectl: Kubectl, backend: Backend) -> None:
    obj = json.loads(kubectl("get", "deployment", "bodhi-server", "-o", "json"))
    assert obj["metadata"]["uid"] == backend.deployment("bodhi-server")["metadata"]["uid"]


def test_rollout_status_waits_for_a_new_image_to_roll_out(kubectl: Kubectl, backend: Backend) -> None:
    kubectl("set", "image", "deployment/bodhi-server", f"bodhi-server={SEED_IMAGE_REPO}:2.0.0")
    out = kubectl("rollout", "status", "deployment/bodhi-server", "--timeout=20s")
    assert 'deployment "bodhi-server" successfully rolled out' in out
    assert backend.rolled_out("bodhi-server")


def test_rollout_status_reports_progress_deadline_exceeded_for_a_bad_image(
        kubectl: Kubectl, backend: Backend) -> None:
    backend.hold_image(f"{SEED_IMAGE_REPO}:bad")
    kubectl("set", "image", "deployment/bodhi-server", f"bodhi-server={SEED_IMAGE_REPO}:bad")
    out = kubectl("rollout", "status", "deployment/bodhi-server", "--timeout=20s", check=False)
    assert "exceeded its progress deadline" in out


def test_set_image_keeps_the_sidecar_and_creates_revision_four(
        kubectl: Kubectl, backend: Backend) -> None:
    kubectl("set", "image", "deployment/bodhi-server", f"bodhi-server={SEED_IMAGE_REPO}:2.0.0")
    d = backend.wait_rolled_out("bodhi-server")
    assert [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] == ["bodhi-server", SIDECAR]
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"


def test_rollout_history_lists_every_revision(kubectl: Kubectl) -> None:
    out = kubectl("rollout", "history", "deployment/bodhi-server")
    assert [line.split()[0] for line in out.splitlines()[2:] if line.strip()] == ["1", "2", "3"]
    assert "deploy registry.example.com/bodhi/bodhi-server:1.4.1" in out


def test_rollout_history_of_one_revision_shows_its_template(kubectl: Kubectl) -> None:
    out = kubectl("rollout", "history", "deployment/bodhi-server", "--revision=2")
    assert f"{SEED_IMAGE_REPO}:1.4.1" in out


def test_rollout_undo_restores_the_previous_image_as_a_new_revision(
        kubectl: Kubectl, backend: Backend) -> None:
    assert "rolled back" in kubectl("rollout", "undo", "deployment/bodhi-server")
    kubectl("rollout", "status", "deployment/bodhi-server", "--timeout=20s")
    assert _image(backend) == f"{SEED_IMAGE_REPO}:1.4.1"
    history = kubectl("rollout", "history", "deployment/bodhi-server")
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "3", "4"]


def test_rollout_undo_to_revision_picks_that_template(kubectl: Kubectl, backend: Backend) -> None:
    kubectl("rollout", "undo", "deployment/bodhi-server", "--to-revision=1")
    backend.wait_rolled_out("bodhi-server")
    assert _image(backend) == f"{SEED_IMAGE_REPO}:1.4.0"


def test_scale_sets_replicas_through_the_scale_subresource(
        kubectl: Kubectl, backend: Backend) -> None:
    kubectl("scale", "deployment/bodhi-server", "--replicas=4")
    d = backend.wait_rolled_out("bodhi-server")
    assert d["spec"]["replicas"] == 4 and d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert any(r.path.endswith("/deployments/bodhi-server/scale") for r in backend.requests())


def test_set_env_feature_flag_keeps_the_other_env_vars(kubectl: Kubectl, backend: Backend) -> None:
    kubectl("set", "env", "deployment/bodhi-server", "-c", "bodhi-server", "ENABLE_TOKEN_REFRESH_LOCKING=false")
    containers = backend.deployment("bodhi-server")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in containers[0]["env"]}
    assert env["ENABLE_TOKEN_REFRESH_LOCKING"] == "false" and env["LOG_LEVEL"] == "info"
    assert containers[1]["name"] == SIDECAR


def test_patch_configmap_flips_the_flag_without_touching_other_keys(
        kubectl: Kubectl, backend: Backend) -> None:
    kubectl("patch", "configmap", "bodhi-config", "--patch", '{"data":{"enable_token_refresh_locking":"false"}}')
    data = backend.configmap("bodhi-config")
    assert data == {"enable_token_refresh_locking": "false", "log_level": "info"}


def test_patch_canary_template_annotation_as_in_the_runbook(
        kubectl: Kubectl, backend: Backend) -> None:
    canary = backend.deployment("bodhi-server")
    canary["metadata"] = {"name": "bodhi-server-canary", "labels": {"app": "bodhi-server", "track": "canary"}}
    canary["spec"]["replicas"] = 1
    canary["spec"]["selector"]["matchLabels"]["track"] = "canary"
    canary["spec"]["template"]["metadata"]["labels"]["track"] = "canary"
    canary.pop("status")
    backend.create_deployment(canary)
    backend.wait_rolled_out("bodhi-server-canary")
    kubectl("patch", "deployment", "bodhi-server-canary", "--patch",
            '{"spec":{"template":{"metadata":{"annotations":{"version":"previous"}}}}}')
    d = backend.wait_rolled_out("bodhi-server-canary")
    assert d["spec"]["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "version": "previous"}
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert d["metadata"]["generation"] == 2


def test_patch_with_json_patch_and_merge_patch_types(kubectl: Kubectl, backend: Backend) -> None:
    kubectl("patch", "configmap", "bodhi-config", "--type=json",
            "--patch", '[{"op":"add","path":"/data/extra","value":"1"}]')
    kubectl("patch", "configmap", "bodhi-config", "--type=merge", "--patch", '{"data":{"log_level":null}}')
    data = backend.configmap("bodhi-config")
    assert data == {"enable_token_refresh_locking": "true", "extra": "1"}


def test_missing_deployment_is_reported_as_not_found(kubectl: Kubectl) -> None:
    out = kubectl("get", "deployment", "nope", check=False)
    assert 'deployments.apps "nope" not found' in out



def test_get_events_lists_the_deployment_controllers_scaling_events(kubectl: Kubectl, backend: Backend) -> None:
    kubectl("set", "image", "deployment/bodhi-server", f"bodhi-server={SEED_IMAGE_REPO}:2.0.0")
    backend.wait_rolled_out("bodhi-server")
    out = kubectl("get", "events", "--field-selector", "involvedObject.kind=Deployment")
    scaling = [line for line in out.splitlines() if "ScalingReplicaSet" in line]
    assert scaling and all("Normal" in line and "deployment/bodhi-server" in line for line in scaling)
    # After ten similar events the real recorder prefixes "(combined from similar events): ", and
    # its spam filter drops an object's events past a burst of 25, so not every step is listed.
    assert re.search(r"Normal +ScalingReplicaSet +deployment/bodhi-server +(\(combined from similar events\): )?"
                     r"Scaled (up|down) replica set bodhi-server-[a-z0-9]+ to \d+", out)


def test_logs_print_the_containers_plain_text_output(emulator_kubectl: Kubectl, seeded_cluster: ClusterEmulator) -> None:
    pod = seeded_cluster.pods("bodhi", "app=bodhi-server")[0]["metadata"]["name"]
    out = emulator_kubectl("logs", pod, "-c", "bodhi-server")
    assert re.fullmatch(r"\S+Z started registry\.example\.com/bodhi/bodhi-server:1\.5\.0, listening on :8080\n", out)
    assert "Defaulted container" in emulator_kubectl("logs", pod)  # kubectl picks the first, as on a kubelet


def test_logs_of_a_container_stuck_pulling_its_image_say_why(
        emulator_kubectl: Kubectl, seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.behaviour.bad_images.add(f"{SEED_IMAGE_REPO}:bad")
    emulator_kubectl("set", "image", "deployment/bodhi-server", f"bodhi-server={SEED_IMAGE_REPO}:bad")
    deadline = time.monotonic() + 5
    while not (stuck := [p for p in seeded_cluster.pods("bodhi") if "waiting" in str(p["status"])]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    out = emulator_kubectl("logs", stuck[0]["metadata"]["name"], "-c", "bodhi-server", check=False)
    assert "is waiting to start: trying and failing to pull image" in out
