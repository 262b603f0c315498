"""deployments/k8s/rbac.yaml grants exactly what the Kubernetes adapter sends.

Every ``Cluster`` operation runs against the emulator; the (verb, group, resource, object
name) of each request in its log is derived as kube-apiserver's authorizer sees it (GET
with a name is ``get``, without is ``list``; POST create — which has no name yet —, PUT
update, PATCH patch, DELETE delete) and compared with the Role: nothing used may be
missing, nothing granted may be unused, and a rule without resourceNames must be needed by
a request that has no name (else it should have been narrowed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from phasegate import errors
from phasegate.adapters.kubernetes import KubernetesCluster, required_permissions
from phasegate.ports import TargetRef
from phasegate.record import ANN_PHASE
from phasegate.rehearsal.cluster import SEED_CONFIGMAP, SEED_ENV_FLAG, SEED_FLAG_KEY, SEED_NAMESPACES, ClusterEmulator
from phasegate.rehearsal.k8s_api import LoggedRequest

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "deployments/k8s/rbac.yaml"
WORKER = ROOT / "deployments/k8s/worker.yaml"
ROLLOUT_ACCOUNT = ("phasegate-rollout", "phasegate")
NEW_IMAGE = "registry.example.com/bodhi/bodhi-server:2.0.0"

Grant = tuple[str, str, str, str | None]  # (verb, API group, resource, object name or None: any)
NAMES = {"target": "bodhi-server", "canary": "bodhi-server-canary", "configmap": SEED_CONFIGMAP}


def manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(verb, group, resource, name)
            for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"] for name in rule.get("resourceNames") or [None]}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def request_grant(request: LoggedRequest) -> tuple[Grant, bool]:
    """(verb, group, resource) of one request and whether it is namespaced."""
    parts = [p for p in request.path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespaced = rest[0] == "namespaces"
    if namespaced:
        rest = rest[2:]
    named = len(rest) > 1
    if request.method == "GET":
        verb = "get" if named else "watch" if parse_qs(request.query).get("watch") == ["true"] else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[request.method]
    return (verb, group, rest[0] + (f"/{rest[2]}" if len(rest) > 2 else ""), rest[1] if named else None), namespaced


def exercise_every_operation(cluster: KubernetesCluster, ref: TargetRef) -> None:
    """Each ``Cluster`` method, on the paths that send different requests."""
    cluster.read_target(ref)
    cluster.set_image(ref, NEW_IMAGE)
    cluster.wait_ready(ref.namespace, ref.deployment, 5)
    cluster.set_canary(ref, NEW_IMAGE, 10, 10)  # creates the canary
    cluster.set_canary(ref, NEW_IMAGE, 50, 10)  # updates it
    cluster.pod_template_hash(ref.namespace, ref.canary)
    cluster.set_env(ref, SEED_ENV_FLAG, "false")
    cluster.set_configmap_key(ref.namespace, SEED_CONFIGMAP, SEED_FLAG_KEY, "false")
    cluster.read_configmap(ref.namespace, SEED_CONFIGMAP)
    cluster.configmap_owners(ref.namespace, SEED_CONFIGMAP)
    cluster.annotate(ref.namespace, ref.deployment, {ANN_PHASE: "canary-50pct"})
    cluster.find_annotated([ref.namespace], ANN_PHASE)
    cluster.remove_canary(ref, 10)
    cluster.wait_ready(ref.namespace, ref.deployment, 5)
    cluster.undo(ref)
    cluster.missing_permissions(ref, SEED_CONFIGMAP)


def exercise_staging(cluster: KubernetesCluster, ref: TargetRef) -> None:
    """What a staging phase and its rollbacks do: no canary is ever made there."""
    cluster.read_target(ref)
    cluster.set_image(ref, NEW_IMAGE)
    cluster.wait_ready(ref.namespace, ref.deployment, 5)
    cluster.set_env(ref, SEED_ENV_FLAG, "false")
    cluster.set_configmap_key(ref.namespace, SEED_CONFIGMAP, SEED_FLAG_KEY, "false")
    cluster.read_configmap(ref.namespace, SEED_CONFIGMAP)
    cluster.configmap_owners(ref.namespace, SEED_CONFIGMAP)
    cluster.annotate(ref.namespace, ref.deployment, {ANN_PHASE: "staging"})
    cluster.find_annotated([ref.namespace], ANN_PHASE)
    cluster.wait_ready(ref.namespace, ref.deployment, 5)
    cluster.undo(ref)
    cluster.missing_permissions(ref, SEED_CONFIGMAP, canary=False)


@pytest.fixture
def used(kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> dict[str, set]:
    """The grants the adapter's requests needed per namespace ("" for cluster-scoped ones)."""
    exercise_every_operation(kube_cluster, seed_target)
    exercise_staging(kube_cluster, TargetRef(SEED_NAMESPACES[1], seed_target.deployment, seed_target.container))
    out: dict[str, set[Grant]] = {}
    for request in seeded_cluster.requests:
        if request.path == "/version":  # a non-resource URL every client may read (system:public-info-viewer)
            continue
        grant, namespaced = request_grant(request)
        parts = request.path.split("/")
        out.setdefault(parts[parts.index("namespaces") + 1] if namespaced else "", set()).add(grant)
    return out


def covered(grant: Grant, granted: set[Grant]) -> bool:
    return grant in granted or (*grant[:3], None) in granted


def rollout_roles() -> dict[str, set[Grant]]:
    return {r["metadata"]["namespace"]: grants(r["rules"]) for r in of_kind(manifests(RBAC), "Role")}


def test_every_request_the_adapter_sends_is_granted_by_the_role(used: dict[str, set[Grant]]) -> None:
    for namespace, granted in rollout_roles().items():
        assert {g for g in used[namespace] if not covered(g, granted)} == set(), namespace


def test_the_role_grants_nothing_the_adapter_does_not_use(used: dict[str, set[Grant]]) -> None:
    for namespace, granted in rollout_roles().items():
        assert granted - used[namespace] == set(), namespace


def test_only_create_and_list_are_not_narrowed_to_named_objects() -> None:
    for namespace, granted in rollout_roles().items():
        unnamed = {(verb, resource) for verb, _, resource, name in granted if name is None}
        expected = {("list", "deployments"), ("list", "replicasets"), ("list", "horizontalpodautoscalers")}
        if namespace == SEED_NAMESPACES[0]:
            expected.add(("create", "deployments"))
        assert unnamed == expected, namespace
        assert ("delete", "apps", "deployments", "bodhi-server") not in granted
        assert ("update", "apps", "deployments", "bodhi-server") not in granted


def test_access_reviews_are_the_only_cluster_scoped_request_and_all_the_cluster_role_grants(
        used: dict[str, set[Grant]]) -> None:
    (cluster_role,) = of_kind(manifests(RBAC), "ClusterRole")
    review = ("create", "authorization.k8s.io", "selfsubjectaccessreviews", None)
    assert used[""] == {review}
    assert grants(cluster_role["rules"]) == {review}


def test_preflight_asks_about_exactly_what_the_role_grants() -> None:
    for namespace, granted in rollout_roles().items():
        required = required_permissions(canary=namespace == SEED_NAMESPACES[0])
        assert {(p.verb, p.group, p.resource, NAMES[p.name] if p.name else None) for p in required} == granted


def test_every_plan_namespace_binds_its_role_to_the_rollout_account() -> None:
    docs = manifests(RBAC)
    assert set(rollout_roles()) == set(SEED_NAMESPACES)
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    (account,) = of_kind(docs, "ServiceAccount")
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == ROLLOUT_ACCOUNT
    for namespace in SEED_NAMESPACES:
        binding = bindings[namespace]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "phasegate-rollout"}
        assert [(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]] == [
            ("ServiceAccount", *ROLLOUT_ACCOUNT)]
    (cluster_binding,) = of_kind(docs, "ClusterRoleBinding")
    assert [(s["name"], s["namespace"]) for s in cluster_binding["subjects"]] == [ROLLOUT_ACCOUNT]


def test_the_worker_starts_the_kubernetes_pool_and_cannot_touch_deployments() -> None:
    docs = manifests(WORKER)
    (deployment,) = of_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:7] == [
        "prefect", "worker", "start", "--pool", "phasegate-k8s", "--type", "kubernetes"]
    (role,) = of_kind(docs, "Role")
    assert pod["serviceAccountName"] == role["metadata"]["name"] != ROLLOUT_ACCOUNT[0]
    assert {group for _, group, _, _ in grants(role["rules"])} == {"", "batch"}


def test_missing_permissions_reports_a_verb_rbac_denies(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.rbac.deny("patch", "configmaps")
    assert kube_cluster.missing_permissions(seed_target, SEED_CONFIGMAP) == [f"patch configmaps/{SEED_CONFIGMAP}"]
    with pytest.raises(errors.Forbidden):
        kube_cluster.set_configmap_key(seed_target.namespace, SEED_CONFIGMAP, SEED_FLAG_KEY, "false")


def test_an_autoscaled_target_needs_exactly_the_autoscaler_rules_the_readme_lists(
        kube_cluster: KubernetesCluster, seeded_cluster: ClusterEmulator, seed_target: TargetRef) -> None:
    seeded_cluster.store.create("autoscaling/horizontalpodautoscalers", "bodhi", {
        "metadata": {"name": "bodhi-server"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bodhi-server"},
                 "minReplicas": 2, "maxReplicas": 20}})
    start = len(seeded_cluster.requests)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 10, 10)
    kube_cluster.set_canary(seed_target, NEW_IMAGE, 50, 10)
    kube_cluster.follow_autoscaler(seed_target, 50)
    kube_cluster.set_image(seed_target, NEW_IMAGE, 10)
    kube_cluster.remove_canary(seed_target, 10)
    used = {request_grant(r)[0] for r in seeded_cluster.requests[start:] if r.path != "/version"}
    autoscaler = {g for g in used if g[2] == "horizontalpodautoscalers"}
    names = {**NAMES, "autoscaler": "bodhi-server"}
    required = {(p.verb, p.group, p.resource, names[p.name] if p.name else None)
                for p in required_permissions(autoscaler=True) if p.resource == "horizontalpodautoscalers"}
    assert autoscaler == required
    readme = (ROOT / "deployments/k8s/README.md").read_text()
    block = yaml.safe_load(readme.split("### With an autoscaler")[1].split("```yaml")[1].split("```")[0])
    assert grants(block) | {("list", "autoscaling", "horizontalpodautoscalers", None)} == required
