"""Tasks of the review and sign-off flows: one I/O step each, adapters from the run context.

Reading the cluster and Prometheus is retried on temporary errors (the scheduled review
may run while either is briefly away); writing a report file or artifact is not, since a
failure there is a bug or a full disk, and retrying hides it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from phasegate import review, runctx
from phasegate.plan import RolloutPlan
from phasegate.ports import TargetRef
from phasegate.record import ANN_PROMOTED_AT, ANN_SIGNED_OFF
from phasegate.render.report import Report, slug, write_review_report
from tasks.common import NO_CACHE, RETRYING


@task(name="find_releases", **RETRYING)
def find_releases(namespaces: list[str]) -> list[review.Release]:
    """Promoted releases: Deployments carrying a promotion time."""
    cluster = runctx.get().cluster
    found: list[review.Release] = []
    # One namespace per call: a WorkloadState does not say which namespace it came from.
    for namespace in namespaces:
        for state in cluster.find_annotated([namespace], ANN_PROMOTED_AT):
            release = review.Release.from_annotations(namespace, state.name, state.annotations)
            if release is not None:
                found.append(release)
    return found


@task(name="running_image", **RETRYING)
def running_image(release: review.Release, container: str) -> str:
    """The image the released Deployment's container runs now."""
    return runctx.get().cluster.read_target(TargetRef(release.namespace, release.deployment, container)).stable.image


@task(name="measure_review", **RETRYING)
def measure_review(plan: RolloutPlan, due: review.DueReview, release: review.Release) -> review.ReviewResult:
    return review.review_due(plan, due, release, runctx.get().metrics)


@task(name="measure_signoff", **RETRYING)
def measure_signoff(plan: RolloutPlan, release: review.Release) -> review.ReviewResult:
    return review.signoff_review(plan, release, runctx.get().metrics)


@task(name="write_report", **NO_CACHE)
def write_report(plan: RolloutPlan, result: review.ReviewResult, reports_dir: str) -> Report:
    return write_review_report(plan, result, runctx.get().metrics, Path(reports_dir))


@task(name="append_to_report", **NO_CACHE)
def append_to_report(report: Report, lines: list[str]) -> Report:
    """The report with a closing section (the sign-off record) added to its file."""
    markdown = report.markdown + "\n" + "\n".join(lines) + "\n"
    report.path.write_text(markdown)
    return replace(report, markdown=markdown)


@task(name="publish_report", **NO_CACHE)
def publish_report(report: Report) -> None:
    """The report as a Prefect markdown artifact (keyed, so the UI keeps its history)."""
    create_markdown_artifact(markdown=report.markdown, key=slug(report.path.stem)[:100], description=report.title)


@task(name="annotate_signed_off", **RETRYING)
def annotate_signed_off(release: review.Release, value: str) -> None:
    runctx.get().cluster.annotate(release.namespace, release.deployment, {ANN_SIGNED_OFF: value})
