"""A HorizontalPodAutoscaler on the target, in the emulator: stable's autoscaler follows the
load through a canary phase (no second HPA stops it, as from Kubernetes 1.26), the canary
keeps its share beside it, and the original comes back exactly."""

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


def scaling(emulator: ClusterEmulator, name: str) -> dict:
    conditions = (emulator.store.get(HPA, "bodhi", name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "ScalingActive"), {"reason": None, "message": ""})


def test_the_load_doubles_during_a_canary_stables_autoscaler_follows_it_and_the_canary_keeps_its_share(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10) == (1, 10)  # beside stable, not out of it
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    stable_hpa = autoscaled.store.get(HPA, "bodhi", "bodhi-server")
    assert (stable_hpa["spec"]["minReplicas"], stable_hpa["spec"]["maxReplicas"]) == (4, 36)
    assert [h["metadata"]["name"] for h in autoscaled.store.list(HPA, "bodhi")] == ["bodhi-server"]
    time.sleep(0.3)  # several autoscaler passes: 11 pods for 10 pods' load is within its tolerance
    assert (replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")) == (10, 1)
    assert kube_cluster.follow_autoscaler(seed_target, 10) is None  # nothing moved: nothing to write

    autoscaled.behaviour.load["bodhi"] = 11.0  # the load doubles: 22 pods at 50 %
    # Stable's HPA counts the canary's pod as its own (it carries stable's selector labels),
    # so it sizes stable for the whole service: 100 % over 11 pods, 22 wanted.
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") == 22)
    assert scaling(autoscaled, "bodhi-server")["reason"] == "ValidMetricFound"
    assert kube_cluster.follow_autoscaler(seed_target, 10) == (2, 22)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    time.sleep(0.3)  # 24 pods at 46 % is outside its tolerance, and it still wants 22 for stable
    assert (replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")) == (22, 2)
    assert kube_cluster.follow_autoscaler(seed_target, 10) is None
    assert scaling(autoscaled, "bodhi-server")["reason"] == "ValidMetricFound"

    autoscaled.behaviour.load["bodhi"] = 4.0  # the load falls to 8 pods' worth
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") == 8)
    assert kube_cluster.follow_autoscaler(seed_target, 10) == (1, 8)
    time.sleep(0.3)
    assert (replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")) == (8, 1)


def test_the_canary_follows_stable_down_to_its_autoscalers_narrowed_min(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10) == (10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    assert autoscaled.store.get(HPA, "bodhi", "bodhi-server")["spec"]["minReplicas"] == 2
    autoscaled.behaviour.load["bodhi"] = 0.5  # one pod's worth at 50 %: under every min
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") == 2)
    assert kube_cluster.follow_autoscaler(seed_target, 50) == (2, 2)
    time.sleep(0.3)  # the autoscaler keeps stable at its min: nothing for the next round to do
    assert (replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")) == (2, 2)
    assert kube_cluster.follow_autoscaler(seed_target, 50) is None


def test_a_mirror_autoscaler_on_the_canary_stops_both_and_the_next_canary_phase_deletes_it(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    """What phasegate did before: an HPA for the canary beside stable's. Both pick the
    canary's pods, so from Kubernetes 1.26 neither scales, and nothing else says so."""
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    mirror = _hpa()
    mirror["metadata"] = {"name": "bodhi-server-canary",
                          "labels": {"app": "bodhi-server", "app.kubernetes.io/managed-by": "phasegate"}}
    mirror["spec"].update(minReplicas=1, maxReplicas=4,
                          scaleTargetRef={**mirror["spec"]["scaleTargetRef"], "name": "bodhi-server-canary"})
    autoscaled.store.create(HPA, "bodhi", mirror, manager="phasegate")
    autoscaled.behaviour.load["bodhi"] = 11.0
    settle(autoscaled, lambda: scaling(autoscaled, "bodhi-server")["reason"] == "AmbiguousSelector"
           and scaling(autoscaled, "bodhi-server-canary")["reason"] == "AmbiguousSelector")
    time.sleep(0.2)
    assert (replicas(autoscaled, "bodhi-server"), replicas(autoscaled, "bodhi-server-canary")) == (10, 1)
    assert "controlled by multiple HPAs: [bodhi/bodhi-server bodhi/bodhi-server-canary]" in \
        scaling(autoscaled, "bodhi-server")["message"]
    warnings = [e for e in autoscaled.store.list("events", "bodhi") if e["reason"] == "AmbiguousSelector"]
    assert {e["involvedObject"]["name"] for e in warnings} == {"bodhi-server", "bodhi-server-canary"}
    state = kube_cluster.read_target(seed_target).autoscaler
    assert state is not None and state.canary_autoscaler and not state.restored
    assert state.scaling_stopped and "AmbiguousSelector" in state.scaling_stopped

    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)  # a rerun, or the next phase
    assert autoscaled.store.find(HPA, "bodhi", "bodhi-server-canary") is None
    # Until the autoscaler's next pass its status still names the mirror: that is not news.
    assert kube_cluster.read_target(seed_target).autoscaler.scaling_stopped is None
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") >= 20)
    assert scaling(autoscaled, "bodhi-server")["reason"] == "ValidMetricFound"


def test_another_teams_autoscaler_on_the_canary_pods_is_reported_not_deleted(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    theirs = _hpa()
    theirs["metadata"] = {"name": "bodhi-server-canary", "labels": {"app": "bodhi-server"}}
    theirs["spec"]["scaleTargetRef"]["name"] = "bodhi-server-canary"
    autoscaled.store.create(HPA, "bodhi", theirs, manager="kubectl-client-side-apply")
    settle(autoscaled, lambda: scaling(autoscaled, "bodhi-server")["reason"] == "AmbiguousSelector")
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    assert autoscaled.store.find(HPA, "bodhi", "bodhi-server-canary") is not None  # not phasegate's to delete
    state = kube_cluster.read_target(seed_target).autoscaler
    assert state is not None and not state.canary_autoscaler
    assert state.scaling_stopped and "bodhi/bodhi-server-canary" in state.scaling_stopped


def test_removing_the_canary_restores_the_original_autoscaler_exactly_and_keeps_the_scaled_total(
        kube_cluster: KubernetesCluster, autoscaled: ClusterEmulator, seed_target: TargetRef) -> None:
    before = copy.deepcopy(autoscaled.store.get(HPA, "bodhi", "bodhi-server"))
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    autoscaled.behaviour.load["bodhi"] = 10.0  # 20 pods at 50 %
    settle(autoscaled, lambda: replicas(autoscaled, "bodhi-server") + replicas(autoscaled, "bodhi-server-canary")
           >= 20)
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


@pytest.mark.parametrize("behavior", [False, True], ids=["without-behavior", "with-behavior"])
def test_stable_lowered_under_its_autoscaler_is_put_back_unless_behavior_holds_it(
        seeded_cluster: ClusterEmulator, behavior: bool) -> None:
    """Why an autoscaled stable is never shrunk for a canary: without ``behavior`` the HPA
    scales to the highest count it recommended in its 5-minute window, so a lower count
    someone writes is put back; with ``behavior`` the current count is held in range."""
    hpa = _hpa()
    if not behavior:
        del hpa["spec"]["behavior"]
    seeded_cluster.behaviour.load["bodhi"] = 4.6  # 10 pods at 46 %: within the tolerance of 50
    seeded_cluster.store.create(HPA, "bodhi", hpa, manager="kubectl-client-side-apply")
    settle(seeded_cluster, lambda: scaling(seeded_cluster, "bodhi-server")["reason"] == "ValidMetricFound")
    seeded_cluster.store.mutate("apps/deployments", "bodhi", "bodhi-server",
                                lambda o: {**o, "spec": {**o["spec"], "replicas": 9}}, subresource="scale",
                                manager="kubectl")  # 9 pods at 51 %: within the tolerance too
    if behavior:
        time.sleep(0.2)  # the scale-down window (120 s) is 0.12 s here
        assert replicas(seeded_cluster, "bodhi-server") == 9
    else:
        settle(seeded_cluster, lambda: replicas(seeded_cluster, "bodhi-server") == 10)
