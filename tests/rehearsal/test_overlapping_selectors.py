"""What the canary's selector (stable's plus ``track``) means for a PodDisruptionBudget that
selects the app: the canary's pods count in the budget, and a canary that never becomes
Ready spends it — a node drain is blocked while the bad canary runs."""

from __future__ import annotations

import time

from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import TargetRef
from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, ClusterEmulator

PDB = "policy/poddisruptionbudgets"


def budget(emulator: ClusterEmulator, until, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = emulator.store.get(PDB, "bodhi", "bodhi-server").get("status") or {}
        if until(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def make_budget(emulator: ClusterEmulator) -> None:
    # The usual PDB: by app label, so it spans both tracks.
    emulator.store.create(PDB, "bodhi", {"metadata": {"name": "bodhi-server"}, "spec": {
        "minAvailable": "90%", "selector": {"matchLabels": {"app": "bodhi-server"}}}})


def test_a_healthy_canary_counts_in_the_apps_budget(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    make_budget(seeded_cluster)
    assert budget(seeded_cluster, lambda s: s.get("expectedPods") == 10)["disruptionsAllowed"] == 1
    kube_cluster.set_canary(seed_target, SEED_IMAGE_REPO + ":2.0.0", 10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    status = budget(seeded_cluster, lambda s: s.get("currentHealthy") == 10 and s.get("expectedPods") == 10)
    assert (status["desiredHealthy"], status["disruptionsAllowed"]) == (9, 1)


def test_a_canary_that_never_starts_spends_the_whole_budget(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    bad = SEED_IMAGE_REPO + ":never-starts"
    seeded_cluster.behaviour.bad_images.add(bad)
    make_budget(seeded_cluster)
    kube_cluster.set_canary(seed_target, bad, 10, 10, timeout_seconds=2)
    status = budget(seeded_cluster, lambda s: s.get("expectedPods") == 11)
    # 10 stable pods serve (surge first), but the unready canary pod is expected too:
    # ceil(90 % of 11) = 10 must stay healthy, so nothing may be evicted.
    assert (status["currentHealthy"], status["desiredHealthy"], status["disruptionsAllowed"]) == (10, 10, 0)
    kube_cluster.remove_canary(seed_target, 10)
    assert budget(seeded_cluster, lambda s: s.get("expectedPods") == 10)["disruptionsAllowed"] == 1
