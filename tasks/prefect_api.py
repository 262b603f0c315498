"""Reading Prefect's own registry: where a person starts a procedure in the UI."""

from __future__ import annotations

from prefect import get_run_logger, task

from phasegate import runctx
from tasks.common import NO_CACHE

# The seed's procedures, as prefect.yaml names their deployments and flows.
ROLLBACK_DEPLOYMENTS = (
    ("Immediate rollback (< 5 min)", "rollback-immediate/rollback-immediate"),
    ("Partial rollback, canary only (< 15 min)", "rollback-canary/rollback-canary"),
    ("Feature flag rollback (< 1 min)", "rollback-feature-flag/rollback-feature-flag"),
)


@task(name="rollback_procedure_links", **NO_CACHE)
def rollback_procedure_links() -> list[tuple[str, str]]:
    """(label, UI link) for each rollback deployment registered on this Prefect server.

    A deployment that is not registered gets no link (a link to nothing helps nobody); the
    caller then names the CLI command instead. Never raises: a notification must go out.
    """
    from prefect.client.orchestration import get_client

    ui = runctx.get().ui_url
    links: list[tuple[str, str]] = []
    try:
        with get_client(sync_client=True) as client:
            for label, name in ROLLBACK_DEPLOYMENTS:
                try:
                    deployment = client.read_deployment_by_name(name)
                except Exception:
                    continue
                if ui:
                    links.append((label, f"{ui.rstrip('/')}/deployments/deployment/{deployment.id}"))
    except Exception as exc:
        get_run_logger().warning("could not look up the rollback deployments: %s", exc)
    return links
