"""Tasks that change or read the cluster. One Kubernetes step each; the adapter makes each
idempotent, the task adds retries for temporary errors and a log line a person can read."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import get_run_logger, task

from phasegate import drift, runctx
from phasegate.drift import Drift, Expectation
from phasegate.errors import ProgressDeadlineExceeded
from phasegate.plan import Phase, RolloutPlan
from phasegate.ports import TargetRef, TargetState, WorkloadState
from tasks.common import RETRYING


@task(name="read_target", **RETRYING)
def read_target(ref: TargetRef) -> TargetState:
    return runctx.get().cluster.read_target(ref)


@task(name="deploy_image", **RETRYING)
def deploy_image(ref: TargetRef, image: str, replicas: int | None = None) -> None:
    """New image on the stable Deployment: a staging deploy, or the promotion to 100 %."""
    get_run_logger().info("setting %s container %s to %s", ref, ref.container, image)
    runctx.get().cluster.set_image(ref, image, replicas)


@task(name="deploy_canary", **RETRYING)
def deploy_canary(ref: TargetRef, image: str, share_percent: float, total_replicas: int,
                  timeout_seconds: float = 600.0) -> tuple[int, int]:
    """The canary at its share; stable shrinks only as canary pods are Ready (surge first)."""
    canary, stable = runctx.get().cluster.set_canary(ref, image, share_percent, total_replicas, timeout_seconds)
    get_run_logger().info("%s: canary %s at %d replica(s), stable at %d", ref, image, canary, stable)
    return canary, stable


@task(name="follow_autoscaler", **RETRYING)
def follow_autoscaler(ref: TargetRef, share_percent: float) -> tuple[int, int] | None:
    """The canary re-sized to its share beside what stable's autoscaler keeps, if it moved."""
    moved = runctx.get().cluster.follow_autoscaler(ref, share_percent)
    if moved is not None:
        get_run_logger().info("%s: stable's autoscaler keeps %d; canary re-sized to %d for its share",
                              ref, moved[1], moved[0])
    return moved


@task(name="wait_until_ready", **RETRYING)
def wait_until_ready(namespace: str, deployment: str, timeout_seconds: float) -> WorkloadState | str:
    """The rolled-out state, or the reason it will not roll out (progress deadline)."""
    try:
        return runctx.get().cluster.wait_ready(namespace, deployment, timeout_seconds)
    except ProgressDeadlineExceeded as exc:
        return f"{namespace}/{deployment}: {exc}"
    except TimeoutError:
        return f"{namespace}/{deployment}: not ready after {timeout_seconds:.0f}s"


@task(name="remove_canary", **RETRYING)
def remove_canary(ref: TargetRef, total_replicas: int) -> None:
    get_run_logger().info("%s: stable back to %d replicas, canary removed", ref, total_replicas)
    runctx.get().cluster.remove_canary(ref, total_replicas)


@task(name="undo_rollout", **RETRYING)
def undo_rollout(ref: TargetRef, to_image: str | None = None) -> int:
    revision = runctx.get().cluster.undo(ref, to_image)
    get_run_logger().info("%s: rolled back to the template of revision %d", ref, revision)
    return revision


@task(name="set_feature_flag_env", **RETRYING)
def set_feature_flag_env(ref: TargetRef, name: str, value: str) -> None:
    runctx.get().cluster.set_env(ref, name, value)


@task(name="set_feature_flag_configmap", **RETRYING)
def set_feature_flag_configmap(namespace: str, name: str, key: str, value: str) -> None:
    runctx.get().cluster.set_configmap_key(namespace, name, key, value)


@task(name="read_configmap", **RETRYING)
def read_configmap(namespace: str, name: str) -> Mapping[str, str]:
    return runctx.get().cluster.read_configmap(namespace, name)


@task(name="expected_state", **RETRYING)
def expected_state(plan: RolloutPlan, phase: Phase, ref: TargetRef, image: str, previous_image: str) -> Expectation:
    """What ``phase`` left once deployed, with the feature-flag values as they read now."""
    cluster = runctx.get().cluster
    env: dict[str, str] = {}
    configmap: dict[str, str] = {}
    flag = plan.feature_flag
    if flag is not None and flag.env is not None:
        value = cluster.read_target(ref).stable.env.get(flag.env)
        if value is not None:
            env[flag.env] = value
    if flag is not None and flag.configmap is not None:
        value = cluster.read_configmap(ref.namespace, flag.configmap.name).get(flag.configmap.key)
        if value is not None:
            configmap[flag.configmap.key] = value
    return drift.expectation(plan, phase, image, previous_image, env=env, configmap=configmap)


@task(name="check_drift", **RETRYING)
def check_drift(plan: RolloutPlan, ref: TargetRef, expected: Expectation) -> list[Drift]:
    """Every way the cluster differs from ``expected`` now, with who changed it where
    managedFields tell. Empty: the world is as the rollout left it."""
    cluster = runctx.get().cluster
    state = cluster.read_target(ref)
    configmap: Mapping[str, str] = {}
    owners: Mapping[str, str] = {}
    flag = plan.feature_flag
    if expected.configmap and flag is not None and flag.configmap is not None:
        configmap = cluster.read_configmap(ref.namespace, flag.configmap.name)
        owners = cluster.configmap_owners(ref.namespace, flag.configmap.name)
    found = drift.find_drift(expected, state, configmap, owners)
    for d in found:
        get_run_logger().warning("%s: drift: %s", ref, d)
    return found


@task(name="annotate_release", **RETRYING)
def annotate_release(namespace: str, deployment: str, annotations: Mapping[str, str | None]) -> None:
    runctx.get().cluster.annotate(namespace, deployment, annotations)


@task(name="check_permissions", **RETRYING)
def check_permissions(ref: TargetRef, configmap: str | None = None, canary: bool = True,
                      autoscaler: str | None = None) -> list[str]:
    return runctx.get().cluster.missing_permissions(ref, configmap, canary, autoscaler)
