"""KubernetesCluster on both backends — the emulator and a real kube-apiserver: one rule per test.

Each test taking ``backend`` runs as ``[emulator]`` and ``[real]``. Denials injected into the
emulator's RBAC stay emulator-only (``kube_cluster``/``seeded_cluster``); the real
authorizer's denials are tests/adapters/test_rbac_real.py's.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from phasegate import errors
from phasegate.adapters.kubernetes import KubernetesCluster, ServerVersion, parse_server_version
from phasegate.ports import Cluster, TargetRef
from phasegate.record import ANN_PHASE, ANN_PROMOTED_AT
from phasegate.rehearsal.cluster import SEED_ENV_FLAG, SEED_IMAGE_REPO, SIDECAR, ClusterEmulator
from tests.fixtures.backends import Backend

NEW_IMAGE = SEED_IMAGE_REPO + ":2.0.0"


def _containers(backend: Backend, name: str) -> dict[str, dict]:
    d = backend.deployment(name)
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def test_adapter_implements_the_cluster_protocol(adapter: KubernetesCluster) -> None:
    assert isinstance(adapter, Cluster)


def test_read_target_reports_stable_image_revision_and_env_without_canary(
        adapter: KubernetesCluster, backend: Backend) -> None:
    state = adapter.read_target(backend.target())
    assert state.canary is None
    assert state.stable.image == SEED_IMAGE_REPO + ":1.5.0"
    assert (state.stable.replicas, state.stable.ready_replicas, state.stable.revision) == (10, 10, 3)
    assert state.stable.env[SEED_ENV_FLAG] == "true"
    assert state.stable.rolled_out


def test_read_target_of_missing_deployment_raises_target_not_found(
        adapter: KubernetesCluster, backend: Backend) -> None:
    with pytest.raises(errors.TargetNotFound):
        adapter.read_target(TargetRef(backend.namespace, "nope", "nope"))


def test_set_image_keeps_sidecar_and_env_and_rolls_out(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_image(backend.target(), NEW_IMAGE)
    state = adapter.wait_ready(backend.namespace, "bodhi-server", backend.rollout_timeout)
    containers = _containers(backend, "bodhi-server")
    assert containers["bodhi-server"]["image"] == NEW_IMAGE
    assert SIDECAR in containers
    assert {e["name"] for e in containers["bodhi-server"]["env"]} >= {SEED_ENV_FLAG, "LOG_LEVEL"}
    assert state.revision == 4 and state.image == NEW_IMAGE


def test_set_image_with_the_running_image_writes_nothing(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_image(backend.target(), NEW_IMAGE, replicas=4)
    before = backend.deployment("bodhi-server")["metadata"]["generation"]
    writes = len(backend.writes())
    adapter.set_image(backend.target(), NEW_IMAGE, replicas=4)
    assert backend.deployment("bodhi-server")["metadata"]["generation"] == before
    assert len(backend.writes()) == writes


def test_set_canary_creates_canary_at_share_and_scales_stable_to_the_rest(
        adapter: KubernetesCluster, backend: Backend) -> None:
    assert adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10) == (1, 9)
    adapter.wait_ready(backend.namespace, "bodhi-server-canary", backend.rollout_timeout)
    canary = backend.deployment("bodhi-server-canary")
    assert canary["spec"]["selector"]["matchLabels"] == {"app": "bodhi-server", "track": "canary"}
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert _containers(backend, "bodhi-server-canary")["bodhi-server"]["image"] == NEW_IMAGE
    assert SIDECAR in _containers(backend, "bodhi-server-canary")
    state = adapter.read_target(backend.target())
    assert state.stable.replicas == 9 and state.canary is not None and state.canary.replicas == 1
    assert len(backend.pods("app=bodhi-server,track=canary")) == 1


def test_set_canary_again_with_same_arguments_writes_nothing(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    stable_gen = backend.deployment("bodhi-server")["metadata"]["generation"]
    canary_gen = backend.deployment("bodhi-server-canary")["metadata"]["generation"]
    writes = len(backend.writes())
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    assert len(backend.writes()) == writes
    assert backend.deployment("bodhi-server-canary")["metadata"]["generation"] == canary_gen
    assert backend.deployment("bodhi-server")["metadata"]["generation"] == stable_gen
    assert len(backend.deployments("track=canary")) == 1


def test_set_canary_at_a_larger_share_updates_the_existing_canary(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    uid = backend.deployment("bodhi-server-canary")["metadata"]["uid"]
    assert adapter.set_canary(backend.target(), NEW_IMAGE, 50, 10) == (5, 5)
    canary = backend.deployment("bodhi-server-canary")
    assert canary["metadata"]["uid"] == uid and canary["spec"]["replicas"] == 5
    assert backend.deployment("bodhi-server")["spec"]["replicas"] == 5


def test_remove_canary_scales_stable_back_before_deleting_the_canary(
        adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_canary(backend.target(), NEW_IMAGE, 50, 10)
    start = len(backend.requests())
    adapter.remove_canary(backend.target(), 10)
    writes = [(r.method, r.path.rsplit("/", 1)[-1]) for r in backend.requests()[start:] if r.method != "GET"]
    assert writes == [("PATCH", "bodhi-server"), ("DELETE", "bodhi-server-canary")]
    assert adapter.read_target(backend.target()).canary is None
    assert backend.deployment("bodhi-server")["spec"]["replicas"] == 10
    backend.wait_rolled_out("bodhi-server")
    # The garbage collector removes the canary's ReplicaSet and pods after the Deployment.
    backend.wait_until(lambda: backend.pods("track=canary") == [], "without canary pods")


def test_remove_canary_when_already_gone_is_a_no_op(adapter: KubernetesCluster, backend: Backend) -> None:
    rv = backend.deployment("bodhi-server")["metadata"]["resourceVersion"]
    adapter.remove_canary(backend.target(), 10)
    assert backend.deployment("bodhi-server")["metadata"]["resourceVersion"] == rv


def test_wait_ready_on_bad_image_raises_progress_deadline_exceeded_quickly(
        adapter: KubernetesCluster, backend: Backend) -> None:
    backend.hold_image(NEW_IMAGE)
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    with pytest.raises(errors.ProgressDeadlineExceeded, match=r"/bodhi-server-canary.*timed out progressing"):
        adapter.wait_ready(backend.namespace, "bodhi-server-canary", 10)


def test_wait_ready_raises_timeout_error_before_the_deadline(adapter: KubernetesCluster, backend: Backend) -> None:
    backend.hold_image(NEW_IMAGE)
    adapter.set_image(backend.target(), NEW_IMAGE)
    with pytest.raises(TimeoutError, match=r"not rolled out after 0.1s"):
        adapter.wait_ready(backend.namespace, "bodhi-server", 0.1)


def test_undo_restores_the_previous_template_under_a_new_revision(
        adapter: KubernetesCluster, backend: Backend) -> None:
    assert adapter.undo(backend.target()) == 2
    state = adapter.wait_ready(backend.namespace, "bodhi-server", backend.rollout_timeout)
    assert state.image == SEED_IMAGE_REPO + ":1.4.1"
    assert state.revision == 4
    assert SIDECAR in _containers(backend, "bodhi-server")


def test_undo_rerun_after_a_crash_does_not_toggle_back(adapter: KubernetesCluster, backend: Backend) -> None:
    timeout = backend.rollout_timeout
    adapter.set_image(backend.target(), NEW_IMAGE)
    adapter.wait_ready(backend.namespace, "bodhi-server", timeout)
    assert adapter.undo(backend.target()) == 3
    adapter.wait_ready(backend.namespace, "bodhi-server", timeout)
    assert adapter.undo(backend.target()) == 3
    assert adapter.wait_ready(backend.namespace, "bodhi-server", timeout).image == SEED_IMAGE_REPO + ":1.5.0"


def test_undo_without_history_is_a_permanent_error(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    adapter.wait_ready(backend.namespace, "bodhi-server-canary", backend.rollout_timeout)
    with pytest.raises(errors.PermanentError, match="no previous revision"):
        adapter.undo(TargetRef(backend.namespace, "bodhi-server-canary", "bodhi-server"))


def test_set_env_changes_stable_and_canary_and_keeps_other_env(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_canary(backend.target(), NEW_IMAGE, 10, 10)
    adapter.set_env(backend.target(), SEED_ENV_FLAG, "false")
    state = adapter.read_target(backend.target())
    assert state.canary is not None
    for workload in (state.stable, state.canary):
        assert workload.env[SEED_ENV_FLAG] == "false"
        assert workload.env["LOG_LEVEL"] == "info"
    assert SIDECAR in _containers(backend, "bodhi-server")


def test_set_configmap_key_changes_one_key_and_keeps_the_others(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.set_configmap_key(backend.namespace, "bodhi-config", "enable_token_refresh_locking", "false")
    assert adapter.read_configmap(backend.namespace, "bodhi-config") == {
        "enable_token_refresh_locking": "false", "log_level": "info"}
    assert backend.configmap("bodhi-config")["enable_token_refresh_locking"] == "false"


def test_set_configmap_key_on_a_missing_configmap_raises_target_not_found(
        adapter: KubernetesCluster, backend: Backend) -> None:
    with pytest.raises(errors.TargetNotFound):
        adapter.set_configmap_key(backend.namespace, "missing", "k", "v")


def test_annotate_merges_and_none_removes(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.annotate(backend.namespace, "bodhi-server", {ANN_PHASE: "canary-10", ANN_PROMOTED_AT: "x"})
    adapter.annotate(backend.namespace, "bodhi-server", {ANN_PROMOTED_AT: None})
    annotations = adapter.read_target(backend.target()).stable.annotations
    assert annotations[ANN_PHASE] == "canary-10" and ANN_PROMOTED_AT not in annotations
    assert "kubernetes.io/change-cause" in annotations


def test_find_annotated_returns_only_deployments_carrying_the_key(adapter: KubernetesCluster, backend: Backend) -> None:
    adapter.annotate(backend.namespace, "bodhi-server", {ANN_PROMOTED_AT: "2025-01-01T00:00:00Z"})
    found = adapter.find_annotated([backend.namespace, backend.staging, "absent"], ANN_PROMOTED_AT)
    assert [(w.name, w.annotations[ANN_PROMOTED_AT]) for w in found] == [("bodhi-server", "2025-01-01T00:00:00Z")]


def test_missing_permissions_is_empty_when_everything_is_allowed(adapter: KubernetesCluster, backend: Backend) -> None:
    assert adapter.missing_permissions(backend.target(), "bodhi-config") == []


def test_server_version_is_read_from_the_server_and_supported(adapter: KubernetesCluster, backend: Backend) -> None:
    version = adapter.server_version()
    assert version.supported
    if backend.name == "real":
        assert version == ServerVersion(1, 20, "v1.20.2")


@pytest.mark.parametrize(("info", "expected", "supported"), [
    ({"major": "1", "minor": "20", "gitVersion": "v1.20.2"}, (1, 20), True),
    ({"major": "1", "minor": "28+", "gitVersion": "v1.28.3-eks-1"}, (1, 28), True),
    ({"major": "1", "minor": "19", "gitVersion": "v1.19.16"}, (1, 19), False),
])
def test_server_versions_before_1_20_are_not_supported(info: dict, expected: tuple[int, int], supported: bool) -> None:
    version = parse_server_version(info)
    assert (version.major, version.minor) == expected and version.supported is supported


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
