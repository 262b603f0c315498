"""Reading Prefect's own registry: where a person starts a procedure in the UI."""

from __future__ import annotations

import json
from typing import Any

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


def proof_key(plan_name: str) -> str:
    return "proof-" + "".join(c if c.isalnum() else "-" for c in plan_name.lower()).strip("-")[:90]


def record_proof(plan_name: str, markdown: str, record: dict[str, Any]) -> str | None:
    """A ``--prove`` result as a markdown artifact on the Prefect API in force, its record (the
    plan's SHA-256, when, whether every case matched) in the artifact's metadata."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()}
    with get_client(sync_client=True) as client:
        artifact = client.create_artifact(ArtifactCreate(
            key=proof_key(plan_name), type="markdown", data=markdown,
            description=f"rehearse --prove of {plan_name}", metadata_=metadata))
    return str(artifact.id)


def latest_proof(plan_name: str) -> dict[str, Any] | None:
    """The newest recorded proof of ``plan_name`` (``record_proof``'s record), or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        by_key = ArtifactFilter(key=ArtifactFilterKey(any_=[proof_key(plan_name)]))
        found = client.read_artifacts(artifact_filter=by_key, sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found or not found[0].metadata_:
        return None
    out: dict[str, Any] = {}
    for k, v in found[0].metadata_.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    out["created"] = found[0].created.isoformat() if found[0].created else None
    return out
