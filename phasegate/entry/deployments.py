"""The entry flows of ``prefect.yaml``'s deployments.

A worker starts a deployment's flow in a fresh process, with nobody to say which cluster,
Prometheus and Slack it talks to. Each entry flow here builds the run context from
``PHASEGATE_*`` settings (with the plan's Slack channel), sets it, and runs the body of the
flow it stands for in its own flow run (``.fn``: one run in the UI, not a parent with a
child of the same name). A rehearsal or a test starts the flows in ``flows/`` directly,
with its own context set.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import checklist, review, rollout
from phasegate import runctx
from phasegate.entry.settings import context_from_settings
from phasegate.errors import PlanError
from phasegate.plan import RolloutPlan, load_plan


def _plan(plan_path: str) -> RolloutPlan:
    try:
        return load_plan(plan_path)
    except PlanError as exc:
        raise rollout.PreflightFailed(
            "the plan is invalid, nothing was deployed:\n" + "\n".join(exc.problems)
        ) from None


@flow(name="progressive-rollout", flow_run_name=rollout.run_name)
def progressive_rollout(
    plan_path: str, image: str, lock_timeout_seconds: float = 30.0, take_over: bool = False
) -> dict[str, Any]:
    """Roll ``image`` out through every phase of the plan at ``plan_path`` (see flows/rollout.py)."""
    with runctx.use(context_from_settings(_plan(plan_path))):
        return rollout.progressive_rollout.fn(plan_path, image, lock_timeout_seconds, take_over)


@flow(name="review-releases")
def review_releases(
    plan_path: str,
    cadence: str,
    now: float | None = None,
    reports_dir: str = "reports",
    lookback_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Review every promoted release that ``cadence`` owes a review (see flows/review.py)."""
    with runctx.use(context_from_settings(_plan(plan_path))):
        return review.review_releases.fn(plan_path, cadence, now, reports_dir, lookback_seconds)


@flow(name="sign-off")
def sign_off(
    plan_path: str,
    now: float | None = None,
    reports_dir: str = "reports",
    confirm_timeout_seconds: int = 7 * 86400,
    poll_interval_seconds: int = 10,
) -> list[dict[str, Any]]:
    """Sign off every release whose period is over (see flows/review.py)."""
    with runctx.use(context_from_settings(_plan(plan_path))):
        return review.sign_off.fn(plan_path, now, reports_dir, confirm_timeout_seconds, poll_interval_seconds)


@flow(name="pre-deployment-checklist")
def pre_deployment_checklist(
    plan_path: str,
    image: str | None = None,
    rules_path: str | None = None,
    dashboard_path: str | None = None,
    timeout_seconds: int = 86400,
    poll_interval_seconds: int = 10,
) -> bool:
    """Confirm the plan's pre-deployment checklist for ``image`` (see flows/checklist.py)."""
    with runctx.use(context_from_settings(_plan(plan_path))):
        return checklist.pre_deployment_checklist.fn(
            plan_path, image, rules_path, dashboard_path, timeout_seconds, poll_interval_seconds
        )
