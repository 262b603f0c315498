"""deployments/k8s/rbac.yaml under the real authorizer: what the Role allows, a rollout needs.

tests/adapters/test_rbac.py derives the verbs from request logs; here kube-apiserver's own
RBAC authorizer judges. The ServiceAccount, Roles, RoleBindings and ClusterRole are applied
from the file as it is — only each Role's namespace is mapped to a fresh pair, as its
header says to do for another plan's namespaces — and the adapter runs as that account
with a token from the TokenRequest API. A whole rollout and each rollback strategy must
succeed; what the Role does not grant must be refused with 403 by the server.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from phasegate import errors
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import TargetRef
from phasegate.record import ANN_PHASE, ANN_PROMOTED_AT
from phasegate.rehearsal.cluster import (
    SEED_CONFIGMAP,
    SEED_CONTAINER,
    SEED_DEPLOYMENT,
    SEED_ENV_FLAG,
    SEED_FLAG_KEY,
    SEED_IMAGE_REPO,
    SEED_NAMESPACES,
)
from phasegate.rehearsal.controlplane import Credentials
from phasegate.rehearsal.kube_http import KubeApiError, KubeHttp
from tests.adapters.test_rbac import RBAC, ROLLOUT_ACCOUNT, manifests
from tests.fixtures.backends import RealControlPlane

NEW_IMAGE = SEED_IMAGE_REPO + ":2.0.0"
_COLLECTIONS = {"ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
                "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"}


@dataclass
class RolloutAccount:
    """The rollout ServiceAccount's adapter and raw client, on two freshly seeded namespaces."""

    cluster: KubernetesCluster
    http: KubeHttp
    production: str
    staging: str

    def target(self, namespace: str | None = None) -> TargetRef:
        return TargetRef(namespace or self.production, SEED_DEPLOYMENT, SEED_CONTAINER)


def _apply(admin: KubeHttp, doc: dict) -> None:
    namespace = doc["metadata"].get("namespace", "")
    try:
        admin.post(_COLLECTIONS[doc["kind"]].format(ns=namespace), doc)
    except KubeApiError as exc:
        if exc.status != 409:  # the account and the cluster-wide grant are shared by the session's tests
            raise


@contextlib.contextmanager
def _account(real_control_plane: RealControlPlane, tmp_path: Path) -> Iterator[RolloutAccount]:
    admin = real_control_plane.observer
    assert admin is not None
    production, staging = real_control_plane.seeded_namespaces()
    renamed = dict(zip(SEED_NAMESPACES, (production, staging), strict=True))
    account_ns = ROLLOUT_ACCOUNT[1]
    if admin.find(f"/api/v1/namespaces/{account_ns}") is None:
        admin.post("/api/v1/namespaces", {"metadata": {"name": account_ns}})
    for doc in manifests(RBAC):
        doc = copy.deepcopy(doc)
        if doc["kind"] in ("Role", "RoleBinding"):
            doc["metadata"]["namespace"] = renamed[doc["metadata"]["namespace"]]
        _apply(admin, doc)
    token = admin.post(f"/api/v1/namespaces/{account_ns}/serviceaccounts/{ROLLOUT_ACCOUNT[0]}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600},
    })["status"]["token"]
    plane = real_control_plane.plane
    kubeconfig = plane.write_kubeconfig(tmp_path / "rollout.kubeconfig", namespace=production, token=token)
    cluster = KubernetesCluster.from_kubeconfig(str(kubeconfig), poll_interval=0.05, backoff=0.02, max_backoff=0.2)
    http = KubeHttp(Credentials(plane.server, plane.ca_file, token))
    try:
        yield RolloutAccount(cluster, http, production, staging)
    finally:
        cluster.close()
        http.close()


@pytest.fixture
def rollout_account(real_control_plane: RealControlPlane, tmp_path: Path) -> Iterator[RolloutAccount]:
    """The account on its own freshly seeded namespaces: for tests that change them."""
    with _account(real_control_plane, tmp_path) as account:
        yield account


@pytest.fixture(scope="module")
def reading_account(real_control_plane: RealControlPlane,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutAccount]:
    """One account and namespace pair shared by the tests that only read or are refused."""
    with _account(real_control_plane, tmp_path_factory.mktemp("rbac")) as account:
        yield account


def test_preflight_finds_every_required_permission_granted_by_the_real_authorizer(
        reading_account: RolloutAccount) -> None:
    for namespace, canary in ((reading_account.production, True), (reading_account.staging, False)):
        target = reading_account.target(namespace)
        assert reading_account.cluster.missing_permissions(target, SEED_CONFIGMAP, canary) == []


def test_the_account_runs_a_whole_rollout_canary_to_full(rollout_account: RolloutAccount) -> None:
    cluster, ref = rollout_account.cluster, rollout_account.target()
    staging = rollout_account.target(rollout_account.staging)
    cluster.set_image(staging, NEW_IMAGE)
    cluster.wait_ready(staging.namespace, staging.deployment, 30)
    for share in (10, 50):
        cluster.set_canary(ref, NEW_IMAGE, share, 10)
        cluster.wait_ready(ref.namespace, ref.canary, 30)
        cluster.annotate(ref.namespace, ref.deployment, {ANN_PHASE: f"canary-{share}pct"})
    cluster.set_image(ref, NEW_IMAGE, replicas=10)
    cluster.remove_canary(ref, 10)
    assert cluster.wait_ready(ref.namespace, ref.deployment, 30).image == NEW_IMAGE
    cluster.annotate(ref.namespace, ref.deployment, {ANN_PROMOTED_AT: "2026-12-01T00:00:00Z"})
    found = cluster.find_annotated([rollout_account.production, rollout_account.staging], ANN_PROMOTED_AT)
    assert [(w.name, w.image) for w in found] == [(ref.deployment, NEW_IMAGE)]


def test_the_account_rolls_back_by_feature_flag(rollout_account: RolloutAccount) -> None:
    cluster, ref = rollout_account.cluster, rollout_account.target()
    cluster.set_canary(ref, NEW_IMAGE, 10, 10)
    cluster.set_configmap_key(ref.namespace, SEED_CONFIGMAP, SEED_FLAG_KEY, "false")
    assert cluster.read_configmap(ref.namespace, SEED_CONFIGMAP)[SEED_FLAG_KEY] == "false"
    cluster.set_env(ref, SEED_ENV_FLAG, "false")
    state = cluster.read_target(ref)
    assert state.canary is not None
    assert state.stable.env[SEED_ENV_FLAG] == state.canary.env[SEED_ENV_FLAG] == "false"


def test_the_account_rolls_back_the_canary_only(rollout_account: RolloutAccount) -> None:
    cluster, ref = rollout_account.cluster, rollout_account.target()
    cluster.set_canary(ref, NEW_IMAGE, 50, 10)
    cluster.wait_ready(ref.namespace, ref.canary, 30)
    cluster.remove_canary(ref, 10)
    state = cluster.read_target(ref)
    assert state.canary is None and state.stable.replicas == 10


def test_the_account_rolls_back_with_a_full_undo(rollout_account: RolloutAccount) -> None:
    cluster, ref = rollout_account.cluster, rollout_account.target()
    cluster.set_image(ref, NEW_IMAGE)
    cluster.wait_ready(ref.namespace, ref.deployment, 30)
    assert cluster.undo(ref) == 3
    assert cluster.wait_ready(ref.namespace, ref.deployment, 30).image == SEED_IMAGE_REPO + ":1.5.0"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/namespaces/{production}/pods",
     {"metadata": {"name": "direct"}, "spec": {"containers": [{"name": "c", "image": NEW_IMAGE}]}}),
    ("GET", "/api/v1/namespaces/{production}/secrets", None),
    ("GET", "/api/v1/namespaces/{production}/secrets/{secret}", None),
    ("PATCH", "/apis/apps/v1/namespaces/default/deployments/bodhi-server", {"spec": {"replicas": 0}}),
    ("GET", "/apis/apps/v1/namespaces/default/deployments", None),
    ("DELETE", "/api/v1/namespaces/{production}/configmaps/" + SEED_CONFIGMAP, None),
    ("POST", "/api/v1/namespaces/{production}/configmaps", {"metadata": {"name": "new"}}),
    ("PATCH", "/apis/apps/v1/namespaces/{production}/deployments/" + SEED_DEPLOYMENT + "/scale",
     {"spec": {"replicas": 0}}),
    ("GET", "/api/v1/namespaces/{production}/pods", None),
])
def test_the_real_authorizer_refuses_what_the_role_does_not_grant(
        reading_account: RolloutAccount, real_control_plane: RealControlPlane,
        method: str, path: str, body: dict | None) -> None:
    observer = real_control_plane.observer
    assert observer is not None
    secrets = observer.get(f"/api/v1/namespaces/{reading_account.production}/secrets")["items"]
    path = path.format(production=reading_account.production, secret=secrets[0]["metadata"]["name"])
    with pytest.raises(KubeApiError) as denied:
        reading_account.http.request(method, path, body,
                                     content_type="application/merge-patch+json" if method == "PATCH"
                                     else "application/json")
    assert denied.value.status == 403, denied.value
    assert f"system:serviceaccount:{ROLLOUT_ACCOUNT[1]}:{ROLLOUT_ACCOUNT[0]}" in str(denied.value)


def test_the_adapter_outside_the_role_namespaces_raises_forbidden_naming_the_request(
        reading_account: RolloutAccount) -> None:
    with pytest.raises(errors.Forbidden, match=r'cannot get resource "deployments" in API group "apps" '
                                               r'in the namespace "default"'):
        reading_account.cluster.read_target(TargetRef("default", SEED_DEPLOYMENT, SEED_CONTAINER))
