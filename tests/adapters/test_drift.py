"""Drift by another field manager, end to end: phasegate leaves a canary, the real kubectl
changes the world behind it, and the check names what changed and who changed it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from phasegate import drift
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import TargetRef
from phasegate.rehearsal.cluster import SEED_CONFIGMAP, SEED_ENV_FLAG, SEED_FLAG_KEY, SEED_IMAGE_REPO, ClusterEmulator
from tests.core.builders import seed_plan
from tests.fixtures.common import require_binary

OLD, NEW = SEED_IMAGE_REPO + ":1.5.0", SEED_IMAGE_REPO + ":1.6.0"
PLAN = seed_plan()


@pytest.fixture
def kubectl(emulator_kubeconfig: Path, tmp_path: Path) -> Callable[..., str]:
    binary = require_binary("kubectl")

    def run(*args: str) -> str:
        result = subprocess.run([binary, "--kubeconfig", str(emulator_kubeconfig), "--cache-dir",
                                 str(tmp_path / "cache"), *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


@pytest.fixture
def canary_left(kube_cluster: KubernetesCluster, seed_target: TargetRef) -> drift.Expectation:
    kube_cluster.set_canary(seed_target, NEW, 10, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    flag = kube_cluster.read_configmap("bodhi", SEED_CONFIGMAP)[SEED_FLAG_KEY]
    return drift.expectation(PLAN, PLAN.phase("canary-10pct"), NEW, OLD, env={SEED_ENV_FLAG: "true"},
                             configmap={SEED_FLAG_KEY: flag})


def check(cluster: KubernetesCluster, ref: TargetRef, expected: drift.Expectation) -> list[drift.Drift]:
    return drift.find_drift(expected, cluster.read_target(ref), cluster.read_configmap("bodhi", SEED_CONFIGMAP),
                            cluster.configmap_owners("bodhi", SEED_CONFIGMAP))


def test_what_phasegate_left_reads_back_without_drift(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, canary_left: drift.Expectation) -> None:
    assert check(kube_cluster, seed_target, canary_left) == []
    assert kube_cluster.read_target(seed_target).canary.managers["image"] == "phasegate"


def test_kubectl_set_image_putting_the_old_image_back_is_named_as_kubectl_set(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, canary_left: drift.Expectation,
        kubectl: Callable[..., str]) -> None:
    kubectl("set", "image", "deploy/bodhi-server-canary", f"bodhi-server={OLD}")
    assert check(kube_cluster, seed_target, canary_left) == [
        drift.Drift("bodhi-server-canary image", NEW, OLD, "kubectl-set")]


def test_kubectl_scale_past_the_tolerance_is_named_as_kubectl(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, canary_left: drift.Expectation,
        kubectl: Callable[..., str]) -> None:
    kubectl("scale", "deploy/bodhi-server-canary", "--replicas=6")
    (found,) = check(kube_cluster, seed_target, canary_left)
    assert (found.what, found.changed_by) == ("replica split", "kubectl")


def test_kubectl_scale_that_keeps_the_share_is_respected(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, canary_left: drift.Expectation,
        kubectl: Callable[..., str]) -> None:
    kubectl("scale", "deploy/bodhi-server", "--replicas=18")
    kubectl("scale", "deploy/bodhi-server-canary", "--replicas=2")
    kube_cluster.wait_ready("bodhi", "bodhi-server-canary", 5)
    assert check(kube_cluster, seed_target, canary_left) == []
    assert drift.observed_total(kube_cluster.read_target(seed_target)) == 20


def test_a_flag_patched_in_the_configmap_and_a_deleted_canary_are_both_named(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, canary_left: drift.Expectation,
        kubectl: Callable[..., str]) -> None:
    kubectl("patch", "configmap", SEED_CONFIGMAP, "-p", f'{{"data":{{"{SEED_FLAG_KEY}":"false"}}}}')
    kubectl("delete", "deploy/bodhi-server-canary")
    found = check(kube_cluster, seed_target, canary_left)
    assert [(d.what, d.found, d.changed_by) for d in found] == [
        ("canary", "deleted", None), (f"ConfigMap key {SEED_FLAG_KEY}", "'false'", "kubectl-patch")]


def test_a_gitops_controller_writing_through_the_api_is_named_by_its_manager(
        kube_cluster: KubernetesCluster, seed_target: TargetRef, seeded_cluster: ClusterEmulator) -> None:
    kube_cluster.set_image(seed_target, NEW, 10)
    kube_cluster.wait_ready("bodhi", "bodhi-server", 5)
    full = drift.expectation(PLAN, PLAN.phase("full"), NEW, OLD)
    assert check(kube_cluster, seed_target, full) == []

    def revert(d: dict) -> dict:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = OLD
        return d

    # What Argo CD's self-heal does: a write of Git's image, under its own field manager.
    seeded_cluster.store.mutate("apps/deployments", "bodhi", "bodhi-server", revert, manager="argocd-controller")
    assert check(kube_cluster, seed_target, full) == [drift.Drift("bodhi-server image", NEW, OLD, "argocd-controller")]
