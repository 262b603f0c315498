"""A HorizontalPodAutoscaler on the target, in the emulator: the canary keeps its share
while the autoscalers follow the load, and the original comes back exactly."""

from __future__ import annotations

import copy
import time

import pytest

from phasegate.adapters.kubernetes import HPA_ORIGINAL, KubernetesCluster
from phasegate.ports import TargetRef
from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, ClusterEmulator

NEW_IMAGE = SEED_IMAGE_REPO + ":2.0.0"
HPA = "autoscaling/horizontalpodautoscalers"


def _hpa(version: str = "v2") -> dict:
    spec = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bodhi-server"},
            "minReplicas": 4, "maxReplicas": 40}
    if version == "v2":
        spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 50}}}]
        spec["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 120}}
    else:
        spec["targetCPUUtilizationPercentage"] = 50
    return {"apiVersion": f"autoscaling/{version}", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "bodhi-server", "labels": {"app": "bodhi-server",
                                                            "app.kubernetes.io/instance": "bodhi"}},
            "spec": spec}


def replicas(emulator: ClusterEmulator, name: str) -> int:
    return emulator.deployment("bodhi", name)["spec"]["replicas"]


def settle(emulator: ClusterEmulator, until, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the autoscalers did not settle"
        time.sleep(0.02)


@pytest.fixture
def autoscaled(seeded_cluster: ClusterEmulator) -> ClusterEmulator:
    seeded_cluster.behaviour.load["bodhi"] = 5.0  # 10 pods at 50 %: the target
    seeded_cluster.store.create(HPA, "bodhi", _hpa(), manager="kubectl-client-side-apply")
    return seeded_cluster


def test_read_target_reports_the_autoscaler_of_stable(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    a = kube_cluster.read_target(seed_target).autoscaler
    assert a is not None and (a.name, a.min_replicas, a.max_replicas, a.restored) == ("bodhi-server", 4, 40, True)


def test_the_load_doubles_during_a_canary_and_both_tracks_follow_it_at_their_share(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    original = copy.deepcopy(autoscaled.store.get(HPA, "bodhi", "bodhi-server")["spec"])
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    stable_hpa = autoscaled.store.get(HPA, "bodhi", "bodhi-server")
    mirror = autoscaled.store.get(HPA, "bodhi", "bodhi-server-canary")
    assert (stable_hpa["spec"]["minReplicas"], stable_hpa["spec"]["maxReplicas"]) == (4, 36)
    assert (mirror["spec"]["minReplicas"], mirror["spec"]["maxReplicas"]) == (1, 4)
    assert mirror["spec"]["scaleTargetRef"]["name"] == "bodhi-server-canary"
    assert mirror["spec"]["metrics"] == original["metrics"] and mirror["spec"]["behavior"] == original["behavior"]
    assert "app.kubernetes.io/instance" not in mirror["metadata"]["labels"]

    autoscaled.behaviour.load["bodhi"] = 11.0  # the load doubles: 22 pods at 50 %
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") + replicas(autoscaled, "bodhi-server-canary")
           >= 20)
    stable_n, canary_n = replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")
    # Whole pods and each autoscaler's 10 % tolerance: 2 or 3 canary pods beside about 20.
    assert canary_n in (2, 3) and 18 <= stable_n <= 22
    assert abs(100 * canary_n / (canary_n + stable_n) - 10) <= 5.0


def test_removing_the_canary_restores_the_original_autoscaler_exactly_and_keeps_the_scaled_total(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    before = copy.deepcopy(autoscaled.store.get(HPA, "bodhi", "bodhi-server"))
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    autoscaled.behaviour.load["bodhi"] = 10.0  # 20 pods at 50 %
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") + replicas(autoscaled, "bodhi-server-canary")
           >= 18)
    kube_cluster.remove_canary(seed_target, 10)  # the start-time 10 is not imposed
    after = autoscaled.store.get(HPA, "bodhi", "bodhi-server")
    assert after["spec"] == before["spec"]
    assert HPA_ORIGINAL not in (after["metadata"].get("annotations") or {})
    assert autoscaled.store.find(HPA, "bodhi", "bodhi-server-canary") is None
    assert autoscaled.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None
    assert replicas(autoscaled, "bodhi-server") > 10  # what the autoscalers wanted, not the 10 of the start
    state = kube_cluster.read_target(seed_target)
    assert state.autoscaler is not None and state.autoscaler.restored


def test_a_rerun_after_a_crash_mid_phase_keeps_the_original_bounds(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)  # the rerun narrows what it narrowed, not again
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    state = kube_cluster.read_target(seed_target).autoscaler
    assert state is not None and state.original_bounds == (4, 40) and (state.min_replicas, state.max_replicas) == (2, 20)


def test_a_v1_autoscaler_is_the_same_object_in_v2_and_is_followed(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    import json
    import urllib.request

    body = json.dumps(_hpa("v1")).encode()
    request = urllib.request.Request(f"{seeded_cluster.url}/apis/autoscaling/v1/namespaces/bodhi/"
                                     "horizontalpodautoscalers", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert json.load(response)["spec"]["targetCPUUtilizationPercentage"] == 50
    stored = seeded_cluster.store.get(HPA, "bodhi", "bodhi-server")
    assert stored["apiVersion"] == "autoscaling/v2"
    assert stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 50
    seeded_cluster.behaviour.load["bodhi"] = 8.0  # 80 % on 10 pods: 16 wanted
    settle(seeded_cluster, lambda: replicas(seeded_cluster, "bodhi-server") == 16)
    assert kube_cluster.read_target(seed_target).autoscaler.desired_replicas == 16
