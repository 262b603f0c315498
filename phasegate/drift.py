"""Is the cluster still what the rollout left? Pure comparisons, and who changed it.

Design decisions:

* A rollout leaves a small, checkable state per phase: the stable image, the canary image
  (or no canary), the split between them, and the feature-flag values as they were right
  after the deploy. ``expectation`` builds it from the plan; ``find_drift`` names every
  difference from what the cluster shows now. A GitOps controller re-applying the old
  image, a CI ``kubectl apply`` or a person mid-incident are all the same finding.
* The split is judged by share, not by pod counts: a person who scales stable from 9 to
  18 during an incident is respected (the rollout goes on with the total they chose), but
  a canary share pushed outside the plan's ``share_tolerance`` — or a stable scaled to 0 —
  is drift, since the gates would then judge a different exposure than the plan's.
* Who changed it comes from ``metadata.managedFields``, as a real API server keeps it: the
  field manager that owns the changed field (``kubectl-set`` for ``kubectl set image``,
  ``kubectl`` for ``kubectl scale``/``rollout undo``, ``argocd-controller``,
  ``kustomize-controller``, ...). ``field_owner`` reads a fieldsV1 tree; an owner that is
  phasegate itself, or none at all, is reported as unknown rather than guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phasegate.capacity import actual_share
from phasegate.plan import Environment, Phase, RolloutPlan
from phasegate.ports import TargetState

# The field manager phasegate's own writes carry (``?fieldManager=``).
FIELD_MANAGER = "phasegate"


@dataclass(frozen=True)
class Expectation:
    """What the rollout left on the cluster for one phase."""

    stable_image: str
    canary_image: str | None  # None: no canary may exist
    canary_share: float | None = None  # planned percent of pods on the canary
    share_tolerance: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)  # flag env var → value on every workload
    configmap: Mapping[str, str] = field(default_factory=dict)  # flag ConfigMap key → value


@dataclass(frozen=True)
class Drift:
    """One difference between what the rollout left and what runs."""

    what: str
    expected: str
    found: str
    changed_by: str | None = None

    def __str__(self) -> str:
        by = f" (changed by {self.changed_by})" if self.changed_by else ""
        return f"{self.what}: expected {self.expected}, found {self.found}{by}"


def expectation(plan: RolloutPlan, phase: Phase, image: str, previous_image: str, *,
                env: Mapping[str, str] | None = None, configmap: Mapping[str, str] | None = None) -> Expectation:
    """The state ``phase`` leaves once deployed; ``env``/``configmap``: the flag values read
    right after the deploy (the rollout does not set them, so they must merely not move)."""
    if phase.environment is Environment.STAGING or not phase.has_canary:
        return Expectation(image, None, env=dict(env or {}), configmap=dict(configmap or {}))
    return Expectation(previous_image, image, phase.canary_share, plan.target.share_tolerance,
                       env=dict(env or {}), configmap=dict(configmap or {}))


def find_drift(expected: Expectation, state: TargetState, configmap: Mapping[str, str] | None = None,
               configmap_owners: Mapping[str, str] | None = None) -> list[Drift]:
    """Every difference between ``expected`` and the cluster's ``state`` (and flag ConfigMap)."""
    found: list[Drift] = []
    stable, canary = state.stable, state.canary

    def by(owners: Mapping[str, str], key: str) -> str | None:
        owner = owners.get(key)
        return owner if owner and owner != FIELD_MANAGER else None

    if stable.image != expected.stable_image:
        found.append(Drift(f"{stable.name} image", expected.stable_image, stable.image, by(stable.managers, "image")))
    if expected.canary_image is None:
        if canary is not None:
            found.append(Drift("canary", "none", f"{canary.name} running {canary.image}"))
    elif canary is None:
        found.append(Drift("canary", f"running {expected.canary_image}", "deleted"))
    else:
        if canary.image != expected.canary_image:
            found.append(Drift(f"{canary.name} image", expected.canary_image, canary.image,
                               by(canary.managers, "image")))
        if expected.canary_share is not None:
            share = actual_share(canary.replicas, stable.replicas)
            split = f"{canary.replicas} canary + {stable.replicas} stable = {share:.1f}%"
            owner = by(canary.managers, "replicas") or by(stable.managers, "replicas")
            if stable.replicas == 0:
                found.append(Drift("replica split", "stable serving beside the canary", split, owner))
            elif abs(share - expected.canary_share) > expected.share_tolerance + 1e-9:
                found.append(Drift("replica split", f"{expected.canary_share:g}% ± {expected.share_tolerance:g}",
                                   split, owner))
            # The load is followed only while stable's HPA scales: a second HPA picking the
            # canary's pods (someone autoscaling the canary) stops both, silently.
            if state.autoscaler is not None and state.autoscaler.scaling_stopped:
                found.append(Drift(f"HPA {state.autoscaler.name}", "scaling", state.autoscaler.scaling_stopped))
    for name, value in expected.env.items():
        for workload in (stable, canary):
            if workload is not None and workload.env.get(name) != value:
                found.append(Drift(f"{workload.name} env {name}", repr(value), repr(workload.env.get(name)),
                                   by(workload.managers, f"env/{name}")))
    for key, value in expected.configmap.items():
        now = (configmap or {}).get(key)
        if now != value:
            found.append(Drift(f"ConfigMap key {key}", repr(value), repr(now), by(configmap_owners or {}, key)))
    return found


def observed_total(state: TargetState) -> int:
    """The total the next step works from: stable's replicas plus the canary's Ready ones —
    what a respected manual scale leaves, and, mid-surge, the count before the surge (stable
    only gives up a pod for a Ready canary pod)."""
    canary = state.canary
    return state.stable.replicas + (min(canary.replicas, canary.ready_replicas) if canary else 0)


# --- managedFields ----------------------------------------------------------------------

def _owns(tree: Any, path: Sequence[str]) -> bool:
    node = tree
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return False
        node = node[step]
    return True


def field_owner(managed_fields: Sequence[Mapping[str, Any]] | None, path: Sequence[str]) -> str | None:
    """The manager owning the fieldsV1 ``path`` (``("f:spec", "f:replicas")``); when several
    share it (server-side apply with the same value), the one that wrote last."""
    owners = [entry for entry in managed_fields or []
              if entry.get("fieldsType", "FieldsV1") == "FieldsV1" and _owns(entry.get("fieldsV1"), path)]
    if not owners:
        return None
    return str(max(owners, key=lambda e: str(e.get("time") or "")).get("manager") or "") or None


def list_key(**fields: Any) -> str:
    """The fieldsV1 key of an item of an associative list: ``k:{"name":"app"}``."""
    return "k:" + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def container_path(container: str, *rest: str) -> tuple[str, ...]:
    return ("f:spec", "f:template", "f:spec", "f:containers", list_key(name=container), *rest)


def workload_owners(managed_fields: Sequence[Mapping[str, Any]] | None, container: str,
                    env_names: Sequence[str]) -> dict[str, str]:
    """``image``, ``replicas`` and ``env/<NAME>`` → the manager that last set them."""
    paths = {"image": container_path(container, "f:image"), "replicas": ("f:spec", "f:replicas")}
    paths.update({f"env/{n}": container_path(container, "f:env", list_key(name=n), "f:value") for n in env_names})
    return {key: owner for key, path in paths.items() if (owner := field_owner(managed_fields, path))}
