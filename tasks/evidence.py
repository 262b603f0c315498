"""Evidence in the Prefect UI: so "why did it roll back?" is answered where people look.

Artifacts need a flow or task run context; outside one (a unit test calling a helper) they
are skipped rather than failing the rollout — evidence must never stop a rollback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact as _update_progress
from prefect.context import FlowRunContext, TaskRunContext

from phasegate.analysis import Measurement


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def measurement_rows(measurements: Sequence[Measurement]) -> list[dict[str, str]]:
    return [
        {
            "gate": m.gate,
            "outcome": m.outcome.value,
            "value": fmt(m.value),
            "baseline": fmt(m.baseline),
            "compared": fmt(m.compared),
            "bound": m.bound,
            "message": m.message,
            "query": m.query,
        }
        for m in measurements
    ]


def markdown_table(measurements: Sequence[Measurement], *, with_query: bool = False) -> str:
    head = "| gate | outcome | value | baseline | compared | bound |" + (" query |" if with_query else "")
    sep = "|---|---|---|---|---|---|" + ("---|" if with_query else "")
    lines = [head, sep]
    for r in measurement_rows(measurements):
        row = f"| {r['gate']} | {r['outcome']} | {r['value']} | {r['baseline']} | {r['compared']} | {r['bound']} |"
        if with_query:
            row += f" `{r['query']}` |"
        lines.append(row)
    return "\n".join(lines)


def publish_round(rollout: str, phase: str, round_no: int, measurements: Sequence[Measurement]) -> None:
    if not _in_run():
        return
    try:
        create_table_artifact(
            table=measurement_rows(measurements),
            key=_key(rollout, phase, "gates"),
            description=f"{phase}: gate round {round_no}",
        )
    except Exception as exc:
        get_run_logger().warning("could not publish gate table: %s", exc)


def start_progress(rollout: str, phase: str) -> str | None:
    if not _in_run():
        return None
    try:
        return str(create_progress_artifact(0.0, key=_key(rollout, phase, "soak"), description=f"{phase} soak"))
    except Exception:
        return None


def update_progress(artifact_id: str | None, percent: float) -> None:
    if artifact_id is None:
        return
    try:
        _update_progress(UUID(str(artifact_id)), max(0.0, min(100.0, percent)))
    except Exception:
        return


def publish_markdown(rollout: str, name: str, markdown: str, description: str) -> None:
    if not _in_run():
        return
    try:
        create_markdown_artifact(markdown=markdown, key=_key(rollout, name), description=description)
    except Exception as exc:
        get_run_logger().warning("could not publish %s: %s", name, exc)
