"""HorizontalPodAutoscalers in the emulator: the two API versions and a minimal controller.

Objects are stored as ``autoscaling/v2`` (the apiserver's storage version) and converted
on the way in and out of ``autoscaling/v1`` requests, as kube-apiserver does: v1's
``targetCPUUtilizationPercentage`` is v2's CPU ``Utilization`` resource metric.

The controller follows the real algorithm on a load signal a test sets instead of a
metrics server: ``Behaviour.load[namespace]`` is the CPU the namespace's workload demands,
in pod-requests (8.0: eight pods' worth). A Service spreads it evenly over every Ready pod
of the namespace, so each pod runs at ``100 × load / ready_pods`` percent.

As the real controller does, an HPA counts the pods its target's *selector* picks, not the
pods its target owns (``replica_calculator.go``): desired replicas are
``ceil(usage_ratio × ready_selected)``, skipped within the 10 % tolerance, with not-yet-Ready
pods counted as idle on a scale-up (and no scaling when that flips the ratio), clamped to
[minReplicas, maxReplicas], never from 0 (an HPA does not scale a Deployment someone scaled
to zero). A second Deployment whose pods carry the target's selector labels (a canary) is
therefore counted as the target's own. And as from Kubernetes 1.26 (kubernetes#112011), when
any pod is picked by two HPAs' selectors, *both* stop: ScalingActive False, reason
AmbiguousSelector, and a Warning event. No namespace load means no metrics: the HPA leaves the
replicas alone, as the real one does.

Its recommendations are stabilized as the real controller's are (``stabilized``): without
``behavior``, it scales to the highest it recommended in the last 5 minutes (the
``--horizontal-pod-autoscaler-downscale-stabilization`` default), which also puts back a
count someone else lowered; with ``behavior``, the current count is held between the lowest
recommendation of the scale-up window and the highest of the scale-down window. Windows
run on the emulator's ``time_scale``. Not emulated: ``behavior`` rate policies and the
legacy scale-up limit (scaling is immediate), and metrics other than CPU utilization.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
DEFAULT_UTILIZATION = 80  # what kube-apiserver defaults a v1 HPA without a target to
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DOWNSCALE_STABILIZATION_S = 300.0  # --horizontal-pod-autoscaler-downscale-stabilization
History = list[tuple[float, int]]  # (when, recommendation) in Kubernetes seconds


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


def desired_replicas(spec: Obj, current: int, utilization: float, ready: int, unready: int = 0) -> int:
    """The real HPA's rule for one CPU-utilization metric over the ``ready`` and ``unready``
    pods its target's selector picks (``GetResourceReplicas``)."""
    low, high = int(spec.get("minReplicas") or 1), int(spec["maxReplicas"])
    if current == 0:
        return 0
    ratio = utilization / _cpu_target(spec)
    if unready == 0 or ratio <= 1:
        wanted = current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * ready)
    else:
        # A scale-up counts pods still starting as idle: their load is on its way to them.
        counted = ratio * ready / (ready + unready)
        wanted = current if abs(counted - 1) <= TOLERANCE or counted < 1 \
            else max(current, math.ceil(counted * (ready + unready)))
    return min(max(wanted, low), high)


def stabilized(spec: Obj, current: int, desired: int, history: History, now: float) -> tuple[int, History]:
    """The count the real controller scales to for ``desired``, and the recommendations it
    keeps (``stabilizeRecommendation`` and ``stabilizeRecommendationWithBehaviors``)."""
    history = history or [(now, current)]  # recordInitialRecommendation
    behavior = spec.get("behavior")
    if not behavior:
        recent = [(t, r) for t, r in history if t >= now - DOWNSCALE_STABILIZATION_S]
        return max([desired] + [r for _, r in recent]), [*recent, (now, desired)]
    up_window = float((behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0))
    down_window = float((behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds", DOWNSCALE_STABILIZATION_S))
    up = min([desired] + [r for t, r in history if t > now - up_window])
    down = max([desired] + [r for t, r in history if t > now - down_window])
    kept = [(t, r) for t, r in history if t > now - max(up_window, down_window)]
    return min(max(current, up), down), [*kept, (now, desired)]


def sync(hpa: Obj, deployment: Obj | None, ready: int, unready: int, utilization: float | None, *,
         ambiguous: str | None, scale: Callable[[int], None], write_status: Callable[[Obj], None],
         now: str, stabilize: Callable[[int, int], int] = lambda current, desired: desired) -> bool:
    """One pass over one HPA: scale its Deployment if the load says so, and report status.
    ``ready``/``unready``: the pods its target's selector picks; ``utilization``: the CPU
    percent each Ready pod runs at (None: no metrics); ``ambiguous``: why its pods are
    another HPA's too; ``stabilize(current, desired)``: what the controller's stabilization
    makes of a recommendation. True when it newly reports the ambiguity (the caller records
    an event)."""
    current = deployment["spec"]["replicas"] if deployment is not None else 0
    status: Obj = {"currentReplicas": current, "desiredReplicas": current}
    conditions: list[Obj] = []
    if deployment is None:
        conditions.append({"type": "AbleToScale", "status": "False", "reason": "FailedGetScale",
                           "message": f"deployment {hpa['spec']['scaleTargetRef'].get('name')!r} not found"})
    elif ambiguous is not None:
        conditions.append({"type": "ScalingActive", "status": "False", "reason": "AmbiguousSelector",
                           "message": ambiguous})
    elif utilization is None or ready == 0:
        conditions.append({"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
                           "message": "no metrics for the target's pods"})
    else:
        # Bounds last, as the real controller does: a recommendation kept from before a
        # narrowing is still held within the bounds of now.
        low, high = int(hpa["spec"].get("minReplicas") or 1), int(hpa["spec"]["maxReplicas"])
        wanted = min(max(stabilize(current, desired_replicas(hpa["spec"], current, utilization, ready, unready)),
                         low), high) if current else 0
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
    was_ambiguous = any(c.get("reason") == "AmbiguousSelector" for c in previous.get("conditions") or [])
    if {k: v for k, v in previous.items() if k != "observedGeneration"} != status:
        write_status({**status, "observedGeneration": hpa["metadata"].get("generation", 1)})
    return ambiguous is not None and not was_ambiguous


def targets(hpa: Obj, kind: str, name: str) -> bool:
    ref: Mapping[str, Any] = hpa.get("spec", {}).get("scaleTargetRef") or {}
    return ref.get("kind") == kind and ref.get("name") == name
