"""The seams between the pure core and the world: small Protocols, frozen values.

Flows and tasks talk to a ``Cluster``, a ``MetricsProvider`` and a ``Notifier`` (see
``notify.py``) through these shapes only, so the same flow runs against a real cluster, the
loopback emulator, or a ``MagicMock`` in a unit test. Adapters raise the errors in
``errors.py``: temporary ones when a retry may help, permanent ones otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from phasegate.checkroute import ServiceURL

TRACK_LABEL = "track"
STABLE = "stable"
CANARY = "canary"
CANARY_SUFFIX = "-canary"


@dataclass(frozen=True)
class TargetRef:
    """One Deployment and the container in it that a rollout changes."""

    namespace: str
    deployment: str
    container: str

    @property
    def canary(self) -> str:
        return self.deployment + CANARY_SUFFIX

    def __str__(self) -> str:
        return f"{self.namespace}/{self.deployment}"


@dataclass(frozen=True)
class WorkloadState:
    """What the cluster says about one Deployment right now."""

    name: str
    image: str
    replicas: int
    ready_replicas: int
    updated_replicas: int
    available_replicas: int
    revision: int
    generation: int
    observed_generation: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # Who last set ``image``, ``replicas`` and ``env/<NAME>``, from managedFields (drift.py).
    managers: Mapping[str, str] = field(default_factory=dict)

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas == self.replicas
            and self.available_replicas == self.replicas
            and self.ready_replicas == self.replicas
        )


@dataclass(frozen=True)
class AutoscalerState:
    """The HorizontalPodAutoscaler that scales the stable Deployment, as phasegate sees it."""

    name: str
    min_replicas: int
    max_replicas: int
    desired_replicas: int
    # The bounds it had before the rollout, while phasegate has it narrowed to stable's share.
    original_bounds: tuple[int, int] | None = None
    canary_autoscaler: bool = False  # a mirror of it for the canary, left by an earlier phasegate, exists
    # Why it cannot scale, when a person must fix it (AmbiguousSelector: another HPA picks its pods).
    scaling_stopped: str | None = None

    @property
    def restored(self) -> bool:
        return self.original_bounds is None and not self.canary_autoscaler


@dataclass(frozen=True)
class TargetState:
    """The stable Deployment, its canary if one exists, and the autoscaler of stable if any."""

    stable: WorkloadState
    canary: WorkloadState | None
    autoscaler: AutoscalerState | None = None


@runtime_checkable
class Cluster(Protocol):
    """The handful of Kubernetes operations a rollout needs. Every one is idempotent:
    running it again after a crash converges to the same state."""

    def read_target(self, ref: TargetRef) -> TargetState:
        """Raise ``TargetNotFound`` if the stable Deployment does not exist."""
        ...

    def set_image(self, ref: TargetRef, image: str, replicas: int | None = None) -> None:
        """New image on the stable Deployment's container (staging deploy, promotion);
        optionally set its replicas in the same write."""
        ...

    def set_canary(self, ref: TargetRef, image: str, share_percent: float, total_replicas: int,
                   timeout_seconds: float = 600.0) -> tuple[int, int]:
        """Create or update ``<deployment>-canary`` with ``image`` at its share of the total
        (``capacity.canary_split``: a canary phase keeps stable at one pod or more), then
        shrink stable one pod per Ready canary pod until it holds the rest, the canary
        exceeds its progress deadline, or ``timeout_seconds``. Returns (canary, stable).

        With an autoscaler on stable, stable's replicas are its: the autoscaler is narrowed
        to stable's share of its bounds, the canary comes at its share *beside* stable's
        replicas now (``capacity.canary_beside``), stable is not shrunk, and
        ``total_replicas`` is unused; ``follow_autoscaler`` keeps the canary beside it."""
        ...

    def follow_autoscaler(self, ref: TargetRef, share_percent: float) -> tuple[int, int] | None:
        """Where an autoscaler scales stable, re-size the canary to its share beside
        stable's replicas now; the new (canary, stable), or None when nothing changed (no
        autoscaler, no canary, or the share already holds). Stable is never written."""
        ...

    def remove_canary(self, ref: TargetRef, total_replicas: int) -> None:
        """Stable back to ``total_replicas`` first (with an autoscaler: to stable plus canary
        now, and the autoscaler restored exactly), then the canary deleted. No-op if gone."""
        ...

    def wait_ready(self, namespace: str, deployment: str, timeout_seconds: float) -> WorkloadState:
        """Block until rolled out. Raise ``ProgressDeadlineExceeded`` when the Deployment
        reports it, ``TimeoutError`` after ``timeout_seconds``."""
        ...

    def undo(self, ref: TargetRef, to_image: str | None = None) -> int:
        """``kubectl rollout undo``: the previous ReplicaSet revision's template becomes the
        Deployment's — with ``to_image``, the latest revision whose container ran that image
        (``--to-revision``), so an env-var change on the new version is not what is restored.
        Returns the revision rolled back to."""
        ...

    def set_env(self, ref: TargetRef, name: str, value: str) -> None:
        """Set one env var on the container of the stable Deployment and, if present, the canary."""
        ...

    def set_configmap_key(self, namespace: str, name: str, key: str, value: str) -> None: ...

    def read_configmap(self, namespace: str, name: str) -> Mapping[str, str]: ...

    def configmap_owners(self, namespace: str, name: str) -> Mapping[str, str]:
        """Data key → the field manager that last set it (from managedFields)."""
        ...

    def annotate(self, namespace: str, deployment: str, annotations: Mapping[str, str | None]) -> None:
        """Merge annotations; a ``None`` value removes the key."""
        ...

    def find_annotated(self, namespaces: Sequence[str], key: str) -> list[WorkloadState]:
        """Deployments in ``namespaces`` that carry annotation ``key``."""
        ...

    def pod_template_hash(self, namespace: str, deployment: str) -> str | None:
        """The ``pod-template-hash`` label of the ReplicaSet running the Deployment's current
        template (what ``{{pod_template_hash}}`` selects); None if there is none."""
        ...

    def missing_permissions(self, ref: TargetRef, configmap: str | None = None, canary: bool = True,
                            autoscaler: str | None = None) -> list[str]:
        """What the rollout needs in ``ref``'s namespace that RBAC denies, as ``verb
        resource[/name]`` (empty: all allowed). ``configmap``: the flag ConfigMap, if the plan
        has one; ``canary``: whether a phase runs a canary in that namespace; ``autoscaler``:
        the HorizontalPodAutoscaler scaling the target, if one does."""
        ...


@dataclass(frozen=True)
class ProxyAnswer:
    """One answer through the API server's service proxy."""

    status: int
    # The API server's own refusal (a ``Status``: no endpoints, no such port, forbidden, its
    # dial error), which is not the Service's answer; None when the Service answered.
    api_error: str | None = None


class ServiceProxySession(Protocol):
    """A pool of connections to the API server for one check's requests."""

    def request(self, method: str, target: ServiceURL, timeout: float) -> ProxyAnswer:
        """Raise ``ClusterUnavailable`` when the API server cannot be reached at all."""
        ...

    def close(self) -> None: ...


class ServiceProxy(Protocol):
    """The API server's service proxy (what ``kubectl proxy`` serves): how a run outside the
    cluster reaches a Service's DNS name with the cluster's own credentials."""

    def open_session(self, connections: int) -> ServiceProxySession:
        """A session holding up to ``connections`` connections open at once."""
        ...

    def proxy_allowed(self, namespace: str, proxy_name: str, verb: str) -> bool:
        """Whether RBAC lets this identity ``verb`` ``services/proxy`` named ``proxy_name``."""
        ...

    def service_port_problem(self, namespace: str, service: str, port: str) -> str | None:
        """Why the proxy cannot reach ``port`` of the Service (missing, no such port); None if it
        can, or if this identity may not read Services (the check's answer will say)."""
        ...


@runtime_checkable
class MetricsProvider(Protocol):
    """Flagger's provider interface: one query → one float, and is-online.

    ``query`` raises ``NoData`` (empty, NaN, ±Inf), ``MultipleSeries``, ``QueryRejected``
    (bad PromQL) or ``ProviderUnavailable`` (connection, timeout, 5xx). Thresholds are not
    the provider's business.
    """

    def query(self, promql: str) -> float: ...

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        """(unix time, value) pairs of a single series; NaN samples dropped."""
        ...

    def is_online(self) -> bool: ...


@runtime_checkable
class SeriesFinder(Protocol):
    """What a Prometheus can say about its series (``/api/v1/series``, label values): how
    preflight and doctor name the matcher that makes a gate query read no data."""

    def series(self, match: str) -> list[Mapping[str, str]]:
        """Label sets of the series matching selector ``match`` (the last hour)."""
        ...

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of ``label`` on the series matching ``match`` (the last hour)."""
        ...
