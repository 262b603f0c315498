"""HorizontalPodAutoscalers in the emulator: the two API versions and a minimal controller.

Objects are stored as ``autoscaling/v2`` (the apiserver's storage version) and converted
on the way in and out of ``autoscaling/v1`` requests, as kube-apiserver does: v1's
``targetCPUUtilizationPercentage`` is v2's CPU ``Utilization`` resource metric.

The controller follows the real algorithm on a load signal a test sets instead of a
metrics server: ``Behaviour.load[namespace]`` is the CPU the namespace's workload demands,
in pod-requests (8.0: eight pods' worth). A Service spreads it evenly over every Ready pod
of the namespace, so each pod runs at ``100 × load / ready_pods`` percent, and the target
Deployment's desired replicas are ``ceil(current × utilization / target)``, skipped within
the 10 % tolerance, clamped to [minReplicas, maxReplicas], never from 0 (an HPA does not
scale a Deployment someone scaled to zero). No namespace load means no metrics: the HPA
leaves the replicas alone, as the real one does. Not emulated: stabilization windows and
``behavior`` policies (scaling is immediate), and metrics other than CPU utilization.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
DEFAULT_UTILIZATION = 80  # what kube-apiserver defaults a v1 HPA without a target to
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance


def _cpu_target(spec: Obj) -> int:
    for metric in spec.get("metrics") or []:
        resource = metric.get("resource") or {}
        target = resource.get("target") or {}
        if metric.get("type") == "Resource" and resource.get("name") == "cpu" and target.get("type") == "Utilization":
            return int(target.get("averageUtilization", DEFAULT_UTILIZATION))
    return DEFAULT_UTILIZATION


def to_v2(obj: Obj) -> Obj:
    """An ``autoscaling/v1`` HPA as the ``autoscaling/v2`` object it is stored as."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v2"
    spec = out.setdefault("spec", {})
    percent = spec.pop("targetCPUUtilizationPercentage", None)
    spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": DEFAULT_UTILIZATION if percent is None else percent}}}]
    status = out.get("status")
    if status:
        current = status.pop("currentCPUUtilizationPercentage", None)
        if current is not None:
            status["currentMetrics"] = [{"type": "Resource", "resource": {"name": "cpu", "current": {
                "averageUtilization": current}}}]
    return out


def to_v1(obj: Obj) -> Obj:
    """The stored ``autoscaling/v2`` HPA as an ``autoscaling/v1`` client sees it."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v1"
    spec = out.setdefault("spec", {})
    target = _cpu_target(spec)
    spec.pop("metrics", None)
    spec.pop("behavior", None)
    spec["targetCPUUtilizationPercentage"] = target
    status = out.get("status") or {}
    metrics = status.pop("currentMetrics", None) or []
    status.pop("conditions", None)
    for metric in metrics:
        current = ((metric.get("resource") or {}).get("current") or {}).get("averageUtilization")
        if current is not None:
            status["currentCPUUtilizationPercentage"] = current
    return out


def desired_replicas(spec: Obj, current: int, utilization: float) -> int:
    """The real HPA's rule for one CPU-utilization metric."""
    low, high = int(spec.get("minReplicas") or 1), int(spec["maxReplicas"])
    if current == 0:
        return 0
    ratio = utilization / _cpu_target(spec)
    wanted = current if abs(ratio - 1) <= TOLERANCE else math.ceil(current * ratio)
    return min(max(wanted, low), high)


def sync(hpa: Obj, deployment: Obj | None, ready_pods: int, load: float | None, *,
         scale: Callable[[int], None], write_status: Callable[[Obj], None], now: str) -> None:
    """One pass over one HPA: scale its Deployment if the load says so, and report status."""
    current = deployment["spec"]["replicas"] if deployment is not None else 0
    status: Obj = {"currentReplicas": current, "desiredReplicas": current}
    conditions: list[Obj] = []
    if deployment is None:
        conditions.append({"type": "AbleToScale", "status": "False", "reason": "FailedGetScale",
                           "message": f"deployment {hpa['spec']['scaleTargetRef'].get('name')!r} not found"})
    elif load is None or ready_pods == 0:
        conditions.append({"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
                           "message": "no metrics for the target's pods"})
    else:
        utilization = 100.0 * load / ready_pods
        wanted = desired_replicas(hpa["spec"], current, utilization)
        status["desiredReplicas"] = wanted
        status["currentMetrics"] = [{"type": "Resource", "resource": {"name": "cpu", "current": {
            "averageUtilization": round(utilization)}}}]
        conditions.append({"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound",
                           "message": "the HPA was able to compute the replica count"})
        if wanted != current:
            scale(wanted)
            status["lastScaleTime"] = now
    previous = hpa.get("status") or {}
    if "lastScaleTime" not in status and previous.get("lastScaleTime"):
        status["lastScaleTime"] = previous["lastScaleTime"]
    status["conditions"] = conditions
    if {k: v for k, v in previous.items() if k != "observedGeneration"} != status:
        write_status({**status, "observedGeneration": hpa["metadata"].get("generation", 1)})


def targets(hpa: Obj, kind: str, name: str) -> bool:
    ref: Mapping[str, Any] = hpa.get("spec", {}).get("scaleTargetRef") or {}
    return ref.get("kind") == kind and ref.get("name") == name
