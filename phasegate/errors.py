"""Errors, grouped by whether retrying helps (as kopf does).

``PermanentError`` subclasses mean "the same call will fail the same way": a bad plan, a
query Prometheus rejects, a missing Deployment. ``TemporaryError`` subclasses mean "try
again later" and may carry a delay: a 5xx, a timeout, a lost connection. Tasks declare
retries only for the temporary kind.
"""

from __future__ import annotations


class PhasegateError(Exception):
    """Base of every error phasegate raises on purpose."""


class PermanentError(PhasegateError):
    """Retrying the same call cannot help."""


class TemporaryError(PhasegateError):
    """Retrying later may help; ``delay`` is the suggested wait in seconds, if known."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PlanError(PermanentError):
    """The plan is invalid; ``problems`` holds one ``FILE:LINE: path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- metrics (Flagger's sentinel errors, providers/errors.go) -------------------------

class NoData(PermanentError):
    """The query returned no sample, or only NaN / ±Inf. Never counts as success."""


class MultipleSeries(PermanentError):
    """A query meant to return one number returned several series."""


class QueryRejected(PermanentError):
    """Prometheus refused the query (HTTP 400: bad PromQL). A plan error, not an outage."""


class ProviderUnavailable(TemporaryError):
    """The metrics server could not be reached or timed out."""


# --- cluster ---------------------------------------------------------------------------

class TargetNotFound(PermanentError):
    """The Deployment (or ConfigMap) the plan names does not exist."""


class ProgressDeadlineExceeded(PermanentError):
    """A Deployment reported ProgressDeadlineExceeded: it will not become ready by waiting."""


class ClusterUnavailable(TemporaryError):
    """The Kubernetes API answered 5xx, timed out, or could not be reached."""


class Forbidden(PermanentError):
    """RBAC denies a verb the rollout needs."""
