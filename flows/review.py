"""The weeks after promotion: scheduled reviews, then sign-off (seed "Post-Deployment
Validation" and "Success Declaration").

Design decisions:

* Releases are found on the cluster (the ``promoted-at`` annotation the rollout writes), not
  passed in: the schedules in ``prefect.yaml`` run with only a plan path and a cadence, and
  a review must still find a release promoted by a rollout run that has long finished.
* One flow serves every cadence (``cadence`` parameter); ``phasegate.review`` decides per
  release whether that cadence owes a review now, so a deployment running past its cadence's
  span simply reviews nothing.
* Adapters come from the run context (``phasegate.runctx.get()``): flow parameters stay JSON for deployments,
  and tests install the loopback ones.
* Before any measurement, the running image is compared with the release record
  (``review.running_mismatch``): a review or sign-off of an image that no longer runs is
  refused with a critical notification, since its verdict would describe something else.
* Sign-off refuses without asking anyone when any criterion failed, was inconclusive or
  errored on any day: a person cannot confirm evidence that is not there. Only a clean record
  pauses for a person (``SignOffInput``: the decision has no default, so the form cannot be
  submitted blind) to confirm the manual criteria and write lessons learned. Then the
  Deployment is annotated ``signed-off``, which also stops later sign-off runs repeating it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from phasegate import record, review, runctx
from phasegate.analysis import Outcome
from phasegate.durations import format_duration
from phasegate.notify import Kind, Notification, Severity
from phasegate.plan import RolloutPlan, load_plan
from phasegate.render.report import slug
from tasks.notify import post_notification
from tasks.prefect_api import rollback_procedure_links
from tasks.review import (
    annotate_signed_off,
    append_to_report,
    find_releases,
    measure_review,
    measure_signoff,
    publish_report,
    running_image,
    write_report,
)

_SEVERITY = {Outcome.SUCCESSFUL: Severity.INFO, Outcome.FAILED: Severity.CRITICAL}


class SignOffInput(RunInput):
    """The person's sign-off: a decision (no default), who, and what was learned."""

    decision: Literal["sign off", "not yet"]
    confirmed_by: str
    lessons_learned: str = ""


def _releases(plan: RolloutPlan) -> list[review.Release]:
    found = find_releases([plan.target.namespaces.production])
    return [r for r in found if r.deployment == plan.target.deployment and r.plan in ("", plan.name)]


def _refused_for_drift(plan: RolloutPlan, release: review.Release, what: str) -> dict[str, Any] | None:
    """The refusal, notified, when the Deployment no longer runs the released image."""
    problem = review.running_mismatch(release, running_image(release, plan.target.container))
    if problem is None:
        return None
    get_run_logger().error("%s of %s refused: %s", what, release, problem)
    post_notification(Notification(kind=Kind.DRIFT, severity=Severity.CRITICAL,
                                   rollout=record.rollout_id(plan.name, release.image),
                                   text=f"{what} of {release} refused: {problem}"))
    return {"release": str(release), "refused": problem}


def _now(now: float | None) -> float:
    return time.time() if now is None else now


@flow(name="review-releases")
def review_releases(
    plan_path: str,
    cadence: str,
    now: float | None = None,
    reports_dir: str = "reports",
    lookback_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Review every promoted release that ``cadence`` owes a review at ``now`` (default: the time)."""
    plan = load_plan(plan_path)
    if plan.reviews is None:
        get_run_logger().info("plan %s has no reviews", plan.name)
        return []
    known = [c.name for c in plan.reviews.cadence]
    if cadence not in known:
        raise ValueError(f"unknown cadence {cadence!r}; the plan has: {', '.join(known)}")
    at = _now(now)
    done: list[dict[str, Any]] = []
    for release in _releases(plan):
        if release.signed_off:
            continue
        owed = review.due_reviews(plan.reviews, release.promoted_at, at, cadence=cadence, lookback=lookback_seconds)
        if owed and (refused := _refused_for_drift(plan, release, owed[0].title)) is not None:
            done.append({**refused, "review": owed[0].title, "outcome": "refused"})
            continue
        for due in owed:
            result = measure_review(plan, due, release)
            report = write_report(plan, result, reports_dir)
            publish_report(report)
            verdict = "passed" if result.passed else "did NOT pass"
            text = f"{due.title} of {release} {verdict} ({due.window})."
            fields = {"Verdict": result.outcome.value, "Report": str(report.path)}
            links: list[tuple[str, str]] = []
            severity = _SEVERITY.get(result.outcome, Severity.WARNING)
            if not result.passed:
                # A review that finds trouble is a page, not a report: name the gate and
                # offer the procedures that act on it (seed "Rollback Procedures").
                severity = Severity.CRITICAL
                failed = [name for name, a in result.assessments.items() if a.outcome is not Outcome.SUCCESSFUL]
                fields["Failed gate"] = ", ".join(failed)
                text += "\n" + "\n".join(result.problems())
                links = rollback_procedure_links()
                text += ("\nRollback procedures: " + ", ".join(label for label, _ in links) if links else
                         "\nRollback procedures: `phasegate rollback PLAN --strategy full_undo|feature_flag`")
            post_notification(
                Notification(
                    kind=Kind.REVIEW,
                    severity=severity,
                    rollout=record.rollout_id(plan.name, release.image),
                    text=text,
                    fields=fields,
                    links=links,
                )
            )
            done.append(
                {
                    "release": str(release),
                    "review": due.title,
                    "outcome": result.outcome.value,
                    "report": str(report.path),
                    "charts": [str(c) for c in report.charts],
                }
            )
    return done


@flow(name="sign-off")
def sign_off(
    plan_path: str,
    now: float | None = None,
    reports_dir: str = "reports",
    confirm_timeout_seconds: int = 7 * 86400,
    poll_interval_seconds: int = 10,
) -> list[dict[str, Any]]:
    """Sign off every release whose period is over and whose criteria held every day."""
    plan = load_plan(plan_path)
    signoff = plan.signoff
    if signoff is None:
        get_run_logger().info("plan %s has no sign-off", plan.name)
        return []
    at = _now(now)
    incident = signoff.incident
    done: list[dict[str, Any]] = []
    for release in _releases(plan):
        if not review.signoff_due(signoff, release, at):
            continue
        if (refused := _refused_for_drift(plan, release, "Sign-off")) is not None:
            done.append({**refused, "signed_off": False, "problems": [refused["refused"]]})
            continue
        result = measure_signoff(plan, release)
        report = write_report(plan, result, reports_dir)
        rollout = record.rollout_id(plan.name, release.image)
        if not result.passed:
            still_open = f" Incident {incident} stays open." if incident else ""
            report = append_to_report(
                report, ["## Sign-off", "", f"**Not signed off**: a criterion did not hold throughout.{still_open}"]
            )
            publish_report(report)
            post_notification(
                Notification(
                    kind=Kind.REVIEW,
                    severity=Severity.WARNING,
                    rollout=rollout,
                    text=f"Sign-off of {release} refused: not every criterion held.{still_open}\n"
                    + "\n".join(result.problems()),
                    fields={"Report": str(report.path)},
                )
            )
            done.append({"release": str(release), "signed_off": False, "problems": result.problems()})
            continue

        confirmation: SignOffInput | None = None
        if signoff.confirm:
            confirmation = _ask_for_confirmation(
                plan, release, report.markdown, confirm_timeout_seconds, poll_interval_seconds
            )
            if confirmation.decision != "sign off":
                publish_report(report)
                post_notification(
                    Notification(
                        kind=Kind.REVIEW,
                        severity=Severity.INFO,
                        rollout=rollout,
                        text=f"Sign-off of {release} postponed by {confirmation.confirmed_by}.",
                    )
                )
                done.append({"release": str(release), "signed_off": False, "problems": ["postponed by a person"]})
                continue

        stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = ["## Sign-off", "", f"**SUCCESS** — every criterion held for the whole period; signed off {stamp}."]
        if incident:
            lines.append(f"Incident **{incident}** is closed.")
        if confirmation is not None:
            lines += ["", f"- Confirmed by: {confirmation.confirmed_by}"]
            lines += [f"- Attested: {criterion}" for criterion in signoff.manual_criteria]
            lines += ["", "### Lessons learned", "", confirmation.lessons_learned or "(none recorded)"]
        report = append_to_report(report, lines)
        publish_report(report)
        annotate_signed_off(release, stamp)
        closed = f" Incident {incident} closed." if incident else ""
        period = format_duration(timedelta(seconds=round(result.window.seconds)))
        post_notification(
            Notification(
                kind=Kind.SIGNED_OFF,
                severity=Severity.INFO,
                rollout=rollout,
                text=f"{release} declared SUCCESS after {period} in production.{closed}",
                fields={"Incident": f"{incident} closed" if incident else "—", "Report": str(report.path)},
            )
        )
        done.append(
            {"release": str(release), "signed_off": True, "incident_closed": incident, "report": str(report.path)}
        )
    return done


def _ask_for_confirmation(
    plan: RolloutPlan, release: review.Release, markdown: str, timeout: int, poll_interval: int
) -> SignOffInput:
    assert plan.signoff is not None
    attest = "".join(f"\n- {c}" for c in plan.signoff.manual_criteria)
    description = f"{markdown}\n\nConfirm, by signing off, that these also hold:{attest}\n"
    runctx.get().tell_pause(str(flow_run.get_id()), "sign-off", list(SignOffInput.model_fields), "sign-off")
    return pause_flow_run(
        wait_for_input=SignOffInput.with_initial_data(description=description),
        timeout=timeout,
        poll_interval=poll_interval,
        key=slug(f"sign-off-{release.namespace}-{release.deployment}-{release.image}")[:100],
    )
