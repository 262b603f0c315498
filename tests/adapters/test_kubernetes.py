"""KubernetesCluster against the loopback emulator: one rule per test."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from phasegate import errors
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import Cluster, TargetRef
from phasegate.record import ANN_PHASE, ANN_PROMOTED_AT
from phasegate.rehearsal.cluster import SEED_ENV_FLAG, SEED_IMAGE_REPO, SIDECAR, ClusterEmulator

NEW_IMAGE = SEED_IMAGE_REPO + ":2.0.0"


def _containers(emulator: ClusterEmulator, name: str, namespace: str = "bodhi") -> dict[str, dict]:
    d = emulator.deployment(namespace, name)
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def test_adapter_implements_the_cluster_protocol(kube_cluster: KubernetesCluster) -> None:
    assert isinstance(kube_cluster, Cluster)


def test_read_target_reports_stable_image_revision_and_env_without_canary(
        kube_cluster: KubernetesCluster, seed_target: TargetRef) -> None:
    state = kube_cluster.read_target(seed_target)
    assert state.canary is None
    assert state.stable.image == SEED_IMAGE_REPO + ":1.5.0"
    assert (state.stable.replicas, state.stable.ready_replicas, state.stable.revision) == (10, 10, 3)
    assert state.stable.env[SEED_ENV_FLAG] == "true"
    assert state.stable.rolled_out


def test_read_target_of_missing_deployment_raises_target_not_found(kube_cluster: KubernetesCluster) -> None:
    with pytest.raises(errors.TargetNotFound):
        kube_cluster.read_target(TargetRef("bodhi", "nope", "nope"))


def test_set_image_keeps_sidecar_and_env_and_rolls_out(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_image(seed_target, NEW_IMAGE)
    state = kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    containers = _containers(seeded_cluster, "bodhi-server")
    assert containers["bodhi-server"]["image"] == NEW_IMAGE
    assert SIDECAR in containers
    assert {e["name"] for e in containers["bodhi-server"]["env"]} >= {SEED_ENV_FLAG, "LOG_LEVEL"}
    assert state.revision == 4 and state.image == NEW_IMAGE


def test_set_image_with_the_running_image_writes_nothing(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_image(seed_target, NEW_IMAGE, replicas=4)
    before = seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["generation"]
    writes = len([r for r in seeded_cluster.requests if r.method != "GET"])
    kube_cluster.set_image(seed_target, NEW_IMAGE, replicas=4)
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["generation"] == before
    assert len([r for r in seeded_cluster.requests if r.method != "GET"]) == writes


def test_set_canary_creates_canary_at_share_and_scales_stable_to_the_rest(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10) == (1, 9)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    canary = seeded_cluster.deployment("bodhi", "bodhi-server-canary")
    assert canary["spec"]["selector"]["matchLabels"] == {"app": "bodhi-server", "track": "canary"}
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert _containers(seeded_cluster, "bodhi-server-canary")["bodhi-server"]["image"] == NEW_IMAGE
    assert SIDECAR in _containers(seeded_cluster, "bodhi-server-canary")
    state = kube_cluster.read_target(seed_target)
    assert state.stable.replicas == 9 and state.canary is not None and state.canary.replicas == 1
    assert len(seeded_cluster.pods("bodhi", "app=bodhi-server,track=canary")) == 1


def test_set_canary_again_with_same_arguments_changes_nothing(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    canary_rv = seeded_cluster.deployment("bodhi", "bodhi-server-canary")["metadata"]["resourceVersion"]
    stable_gen = seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["generation"]
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    assert seeded_cluster.deployment("bodhi", "bodhi-server-canary")["metadata"]["resourceVersion"] == canary_rv
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["generation"] == stable_gen
    assert len(seeded_cluster.store.list("apps/deployments", "bodhi", labels="track=canary")) == 1


def test_set_canary_at_a_larger_share_updates_the_existing_canary(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    uid = seeded_cluster.deployment("bodhi", "bodhi-server-canary")["metadata"]["uid"]
    assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10) == (5, 5)
    canary = seeded_cluster.deployment("bodhi", "bodhi-server-canary")
    assert canary["metadata"]["uid"] == uid and canary["spec"]["replicas"] == 5
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["spec"]["replicas"] == 5


def test_remove_canary_scales_stable_back_before_deleting_the_canary(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    start = len(seeded_cluster.requests)
    kube_cluster.remove_canary(seed_target, 10)
    writes = [(r.method, r.path.rsplit("/", 1)[-1]) for r in seeded_cluster.requests[start:] if r.method != "GET"]
    assert writes == [("PATCH", "bodhi-server"), ("DELETE", "bodhi-server-canary")]
    assert kube_cluster.read_target(seed_target).canary is None
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["spec"]["replicas"] == 10
    seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")
    assert seeded_cluster.pods("bodhi", "track=canary") == []


def test_remove_canary_when_already_gone_is_a_no_op(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    rv = seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["resourceVersion"]
    kube_cluster.remove_canary(seed_target, 10)
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["metadata"]["resourceVersion"] == rv


def test_wait_ready_on_bad_image_raises_progress_deadline_exceeded_quickly(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.behaviour.bad_images.add(NEW_IMAGE)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    with pytest.raises(errors.ProgressDeadlineExceeded, match=r"bodhi/bodhi-server-canary.*timed out progressing"):
        kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 10)


def test_wait_ready_raises_timeout_error_before_the_deadline(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.behaviour.bad_images.add(NEW_IMAGE)
    kube_cluster.set_image(seed_target, NEW_IMAGE)
    with pytest.raises(TimeoutError, match=r"not rolled out after 0.1s"):
        kube_cluster.wait_ready("bodhi", "bodhi-server", 0.1)


def test_undo_restores_the_previous_template_under_a_new_revision(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    assert kube_cluster.undo(seed_target) == 2
    state = kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    assert state.image == SEED_IMAGE_REPO + ":1.4.1"
    assert state.revision == 4
    assert SIDECAR in _containers(seeded_cluster, "bodhi-server")


def test_undo_rerun_after_a_crash_does_not_toggle_back(
        kube_cluster: KubernetesCluster, seed_target: TargetRef) -> None:
    kube_cluster.set_image(seed_target, NEW_IMAGE)
    kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    assert kube_cluster.undo(seed_target) == 3
    kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    assert kube_cluster.undo(seed_target) == 3
    assert kube_cluster.wait_ready("bodhi", "bodhi-server", 5).image == SEED_IMAGE_REPO + ":1.5.0"


def test_undo_without_history_is_a_permanent_error(
        kube_cluster: KubernetesCluster, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    with pytest.raises(errors.PermanentError, match="no previous revision"):
        kube_cluster.undo(TargetRef("bodhi", "bodhi-server-canary", "bodhi-server"))


def test_set_env_changes_stable_and_canary_and_keeps_other_env(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.set_env(seed_target, SEED_ENV_FLAG, "false")
    state = kube_cluster.read_target(seed_target)
    assert state.canary is not None
    for workload in (state.stable, state.canary):
        assert workload.env[SEED_ENV_FLAG] == "false"
        assert workload.env["LOG_LEVEL"] == "info"
    assert SIDECAR in _containers(seeded_cluster, "bodhi-server")


def test_set_configmap_key_changes_one_key_and_keeps_the_others(kube_cluster: KubernetesCluster) -> None:
    kube_cluster.set_configmap_key("bodhi", "bodhi-config", "enable_token_refresh_locking", "false")
    assert kube_cluster.read_configmap("bodhi", "bodhi-config") == {
        "enable_token_refresh_locking": "false", "log_level": "info"}


def test_set_configmap_key_on_a_missing_configmap_raises_target_not_found(kube_cluster: KubernetesCluster) -> None:
    with pytest.raises(errors.TargetNotFound):
        kube_cluster.set_configmap_key("bodhi", "missing", "k", "v")


def test_annotate_merges_and_none_removes(kube_cluster: KubernetesCluster, seed_target: TargetRef) -> None:
    kube_cluster.annotate("bodhi", "bodhi-server", {ANN_PHASE: "canary-10", ANN_PROMOTED_AT: "x"})
    kube_cluster.annotate("bodhi", "bodhi-server", {ANN_PROMOTED_AT: None})
    annotations = kube_cluster.read_target(seed_target).stable.annotations
    assert annotations[ANN_PHASE] == "canary-10" and ANN_PROMOTED_AT not in annotations
    assert "kubernetes.io/change-cause" in annotations


def test_find_annotated_returns_only_deployments_carrying_the_key(kube_cluster: KubernetesCluster) -> None:
    kube_cluster.annotate("bodhi", "bodhi-server", {ANN_PROMOTED_AT: "2025-01-01T00:00:00Z"})
    found = kube_cluster.find_annotated(["bodhi", "bodhi-staging", "absent"], ANN_PROMOTED_AT)
    assert [w.name for w in found] == ["bodhi-server"]
    assert found[0].annotations[ANN_PROMOTED_AT] == "2025-01-01T00:00:00Z"


def test_missing_permissions_is_empty_when_everything_is_allowed(kube_cluster: KubernetesCluster) -> None:
    assert kube_cluster.missing_permissions(TargetRef("bodhi", "bodhi-server", "bodhi-server"), "bodhi-config") == []


def test_missing_permissions_names_each_denied_verb_and_resource(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.rbac.deny("delete", "deployments")
    seeded_cluster.rbac.deny("patch", "configmaps")
    assert kube_cluster.missing_permissions(TargetRef("bodhi", "bodhi-server", "bodhi-server"), "bodhi-config") == [
        "delete deployments/bodhi-server-canary", "patch configmaps/bodhi-config"]


def test_denied_write_raises_forbidden(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.rbac.deny("patch", "deployments")
    with pytest.raises(errors.Forbidden, match="cannot patch"):
        kube_cluster.set_image(seed_target, NEW_IMAGE)


def test_unreachable_api_raises_cluster_unavailable(seed_target: TargetRef) -> None:
    with ClusterEmulator() as emulator:
        url = emulator.url
    adapter = KubernetesCluster.from_url(url, attempts=2, backoff=0.01)
    with pytest.raises(errors.ClusterUnavailable):
        adapter.read_target(seed_target)


def _ready_pods(emulator: ClusterEmulator) -> int:
    pods = emulator.pods("bodhi", "app=bodhi-server")
    return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
               for p in pods)


def test_a_canary_that_never_starts_costs_no_serving_capacity(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    bad = SEED_IMAGE_REPO + ":never-starts"
    seeded_cluster.behaviour.bad_images.add(bad)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_ready_pods(seeded_cluster))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert kube_cluster.set_canary(seed_target, bad, 50, 10, timeout_seconds=5) == (5, 5)
        with pytest.raises(errors.ProgressDeadlineExceeded):
            kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
        kube_cluster.remove_canary(seed_target, 10)
        seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")
    finally:
        stop.set()
        sampler.join()
    assert len(samples) > 10  # sampled throughout: the progress deadline takes 0.6 s here
    assert min(samples) >= 10
    assert seeded_cluster.deployment("bodhi", "bodhi-server")["spec"]["replicas"] == 10


def test_a_healthy_canary_takes_over_pod_by_pod_and_capacity_never_dips(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.behaviour.ready_delay = 0.1  # long enough to see stable shrink in steps
    stable_sizes: list[int] = []
    ready: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            stable_sizes.append(seeded_cluster.deployment("bodhi", "bodhi-server")["spec"]["replicas"])
            ready.append(_ready_pods(seeded_cluster))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10) == (5, 5)
        kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
        kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    finally:
        stop.set()
        sampler.join()
    assert min(ready) >= 10
    assert stable_sizes[0] == 10 and stable_sizes[-1] == 5
    assert all(a >= b for a, b in itertools.pairwise(stable_sizes))  # stable only ever shrinks


def test_the_canary_does_not_carry_the_labels_a_gitops_tool_claims_the_stable_by(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    claimed = {"app.kubernetes.io/instance": "bodhi", "app.kubernetes.io/managed-by": "Helm",
               "kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
               "argocd.argoproj.io/instance": "bodhi", "team": "identity"}

    def claim(d: dict) -> dict:
        d["metadata"]["labels"].update(claimed)
        d["metadata"].setdefault("annotations", {})["argocd.argoproj.io/tracking-id"] = \
            "bodhi:apps/Deployment:bodhi/bodhi-server"
        return d

    seeded_cluster.store.mutate("apps/deployments", "bodhi", "bodhi-server", claim)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    canary = seeded_cluster.deployment("bodhi", "bodhi-server-canary")
    assert canary["metadata"]["labels"] == {"app": "bodhi-server", "team": "identity", "track": "canary",
                                            "app.kubernetes.io/managed-by": "phasegate"}
    assert "argocd.argoproj.io/tracking-id" not in (canary["metadata"].get("annotations") or {})


def test_pod_template_hash_is_the_current_replicasets_and_its_pods_carry_it(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    import re

    from phasegate import gates

    before = kube_cluster.pod_template_hash("bodhi", "bodhi-server")
    assert before and re.fullmatch(f"[{gates.K8S_ALPHABET}]{{1,10}}", before)
    pods = seeded_cluster.pods("bodhi", f"pod-template-hash={before}")
    assert len(pods) == 10
    assert all(re.fullmatch(gates.pods_regex("bodhi-server"), p["metadata"]["name"]) for p in pods)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    canary = kube_cluster.pod_template_hash("bodhi", "bodhi-server-canary")
    assert canary and canary != before
    assert kube_cluster.pod_template_hash("bodhi", "bodhi-server") == before  # stable is never touched
    assert kube_cluster.pod_template_hash("bodhi", "nope") is None
