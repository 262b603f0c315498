"""The entry flows of ``prefect.yaml``'s deployments.

A worker starts a deployment's flow in a fresh process, with nobody to say which cluster,
Prometheus and Slack it talks to. Each entry flow here builds the run context from
``PHASEGATE_*`` settings (with the plan's Slack channel), sets it, and runs the body of the
flow it stands for in its own flow run (``.fn``: one run in the UI, not a parent with a
child of the same name). A rehearsal or a test starts the flows in ``flows/`` directly,
with its own context set.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from prefect import Flow, flow

from flows import checklist, review, rollout, runbook
from phasegate import runctx
from phasegate.entry.settings import context_from_settings
from phasegate.errors import PlanError
from phasegate.plan import RolloutPlan, Strategy, load_plan


def _plan(plan_path: str) -> RolloutPlan:
    try:
        return load_plan(plan_path)
    except PlanError as exc:
        raise rollout.PreflightFailed(
            "the plan is invalid, nothing was deployed:\n" + "\n".join(exc.problems)
        ) from None


def entry_flow(inner: Flow[..., Any]) -> Flow[..., Any]:
    """``inner`` as a deployment's entry point: the same name, parameters and run names,
    with the run context built from settings around its body."""

    @functools.wraps(inner.fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        plan_path = inspect.signature(inner.fn).bind(*args, **kwargs).arguments["plan_path"]
        with runctx.use(context_from_settings(_plan(plan_path))):
            return inner.fn(*args, **kwargs)

    decorate = flow(name=inner.name, flow_run_name=inner.flow_run_name, description=inner.description)
    entry: Flow[..., Any] = decorate(body)
    return entry


progressive_rollout = entry_flow(rollout.progressive_rollout)
review_releases = entry_flow(review.review_releases)
sign_off = entry_flow(review.sign_off)
pre_deployment_checklist = entry_flow(checklist.pre_deployment_checklist)


def _rollback(plan_path: str, strategy: Strategy, reason: str, requested_by: str, image: str | None) -> dict[str, Any]:
    with runctx.use(context_from_settings(_plan(plan_path))):
        return runbook.manual_rollback.fn(plan_path, strategy, reason, requested_by, image)


# One flow per procedure, the strategy fixed: the form a person fills in offers no way to pick
# the wrong one, and each run's name says which runbook it was.
@flow(name="rollback-immediate")
def rollback_immediate(plan_path: str, reason: str, requested_by: str, image: str | None = None) -> dict[str, Any]:
    """Seed "Immediate Rollback (< 5 minutes)": `rollout undo` the release, verified (see flows/runbook.py)."""
    return _rollback(plan_path, Strategy.FULL_UNDO, reason, requested_by, image)


@flow(name="rollback-canary")
def rollback_canary(plan_path: str, reason: str, requested_by: str, image: str | None = None) -> dict[str, Any]:
    """Seed "Partial Rollback (< 15 minutes)": remove the canary only, stable back to full size."""
    return _rollback(plan_path, Strategy.CANARY_ONLY, reason, requested_by, image)


@flow(name="rollback-feature-flag")
def rollback_feature_flag(plan_path: str, reason: str, requested_by: str, image: str | None = None) -> dict[str, Any]:
    """Seed "Feature Flag Rollback (< 1 minute)": ConfigMap key off (no restart), then the env var if needed."""
    return _rollback(plan_path, Strategy.FEATURE_FLAG, reason, requested_by, image)


# Started by the automation on ``phasegate.alert.firing`` events (prefect.yaml's trigger).
rollback_candidate = entry_flow(runbook.rollback_candidate)
