"""The adapter under crashes, 500/409 storms and slow answers: it converges or says why."""

from __future__ import annotations

import pytest

from phasegate import errors
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import TargetRef
from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, ClusterEmulator

NEW_IMAGE = SEED_IMAGE_REPO + ":2.0.0"


def _stable_replicas_seen(emulator: ClusterEmulator) -> list[int]:
    events, _ = emulator.store.events_after(0)
    return [e.object["spec"]["replicas"] for e in events
            if e.key == "apps/deployments" and e.object["metadata"]["name"] == "bodhi-server"
            and e.object["metadata"]["namespace"] == "bodhi"]


def test_crash_between_canary_create_and_stable_scale_converges_on_rerun(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.rbac.deny("patch", "deployments")  # the stable scale-down is the step that "crashes"
    with pytest.raises(errors.Forbidden):
        kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    assert seeded_cluster.deployment("bodhi", "bodhi-server-canary")["spec"]["replicas"] == 1
    seeded_cluster.rbac.denied.clear()
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10) == (1, 9)
    state = kube_cluster.read_target(seed_target)
    assert state.stable.replicas == 9 and state.canary is not None and state.canary.replicas == 1


def test_crash_between_stable_scale_up_and_canary_delete_converges_on_rerun(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    seeded_cluster.rbac.deny("delete", "deployments")
    with pytest.raises(errors.Forbidden):
        kube_cluster.remove_canary(seed_target, 10)
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["spec"]["replicas"] == 10
    seeded_cluster.rbac.denied.clear()
    kube_cluster.remove_canary(seed_target, 10)
    assert kube_cluster.read_target(seed_target).canary is None


def test_500_and_409_storm_still_converges_to_exactly_one_canary_and_never_zero_stable(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.faults.set(error_500=0.3, conflict_409=0.2, slow=0.05, slow_seconds=0.05, seed=7)
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10) == (1, 9)
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10) == (1, 9)
    kube_cluster.set_env(seed_target, "ENABLE_TOKEN_REFRESH_LOCKING", "false")
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10) == (5, 5)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    kube_cluster.remove_canary(seed_target, 10)
    kube_cluster.set_image(seed_target, NEW_IMAGE)
    kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    assert kube_cluster.undo(seed_target) == 4  # the set_env revision, before the new image
    seeded_cluster.faults.clear()

    injected = seeded_cluster.faults.injected
    assert injected["500"] >= 5 and injected["409"] >= 3
    assert 0 not in _stable_replicas_seen(seeded_cluster)
    assert seeded_cluster.store.list("apps/deployments", "bodhi", labels="track=canary") == []
    assert kube_cluster.wait_ready("bodhi", "bodhi-server", 5).image == SEED_IMAGE_REPO + ":1.5.0"


def test_canary_storm_leaves_exactly_one_canary(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.faults.set(error_500=0.3, conflict_409=0.3, seed=11)
    for share in (10, 50, 10, 50):
        kube_cluster.set_canary(seed_target, NEW_IMAGE, share, 10)
    seeded_cluster.faults.clear()
    canaries = seeded_cluster.store.list("apps/deployments", "bodhi", labels="track=canary")
    assert [c["metadata"]["name"] for c in canaries] == ["bodhi-server-canary"]
    assert canaries[0]["spec"]["replicas"] == 5
    assert 0 not in _stable_replicas_seen(seeded_cluster)


def test_persistent_500s_raise_cluster_unavailable(
        seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    adapter = KubernetesCluster.from_url(seeded_cluster.url, attempts=3, backoff=0.01)
    seeded_cluster.faults.set(error_500=1.0)
    with pytest.raises(errors.ClusterUnavailable, match="after 3 attempts"):
        adapter.read_target(seed_target)


def test_slow_answers_within_the_request_timeout_are_waited_for(
        seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    adapter = KubernetesCluster.from_url(seeded_cluster.url, request_timeout=(1.0, 1.0))
    seeded_cluster.faults.set(slow=1.0, slow_seconds=0.1)
    assert adapter.read_target(seed_target).stable.replicas == 10


def test_answers_slower_than_the_request_timeout_are_retried_then_unavailable(
        seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    adapter = KubernetesCluster.from_url(seeded_cluster.url, request_timeout=(1.0, 0.05), attempts=2, backoff=0.01)
    seeded_cluster.faults.set(slow=1.0, slow_seconds=0.3)
    with pytest.raises(errors.ClusterUnavailable):
        adapter.read_target(seed_target)
