"""One flow run's handle on a rollout: the plan, the target, the release record, and the
events and notifications it records.

Design decisions:

* Subflows take small, bounded parameters — the plan, the image, a phase name, the id of
  the flow run driving the rollout — never this object: Prefect stores every flow run's
  parameters (and refuses them past 512 KiB), and a history that grows with each gate round
  would outgrow that limit in the middle of a rollout. Each flow run ``attach``es to the
  record on the cluster instead, which is the durable state anyway, and returns its events.
* Notifications go through ``Rollout.notify`` with a key; a key already recorded in the
  release annotations is not sent again, so a resumed rollout does not repeat itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from phasegate import runctx
from phasegate.errors import PermanentError
from phasegate.notify import Delivery, Kind, Notification, Severity
from phasegate.plan import Environment, Phase, RolloutPlan
from phasegate.ports import TargetRef
from phasegate.record import Release
from tasks.cluster import annotate_release, read_target
from tasks.notify import post_notification


class RecordMissing(PermanentError):
    """A subflow found no release record of its rollout on the Deployment."""


def target_ref(plan: RolloutPlan) -> TargetRef:
    """The production Deployment: where the release record lives."""
    return TargetRef(plan.target.namespaces.production, plan.target.deployment, plan.target.container)


@dataclass
class Rollout:
    plan: RolloutPlan
    image: str
    release: Release
    # The flow run driving the rollout (the parent): approval pauses and links live there.
    flow_run_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[tuple[str, Notification, Any]] = field(default_factory=list)

    @classmethod
    def attach(cls, plan: RolloutPlan, image: str, driver: str | None) -> Rollout:
        """This rollout as its record on the cluster has it now."""
        ref = target_ref(plan)
        release = Release.from_annotations(read_target(ref).stable.annotations)
        if release is None or release.image != image:
            raise RecordMissing(f"{ref} carries no release record of {image}")
        return cls(plan, image, release, flow_run_id=driver)

    def reload(self) -> None:
        """Take up what a subflow wrote to the record (state, notifications sent, Slack thread)."""
        release = Release.from_annotations(read_target(self.ref).stable.annotations)
        if release is not None and release.id == self.release.id:
            self.release = release

    @property
    def ref(self) -> TargetRef:
        return target_ref(self.plan)

    @property
    def name(self) -> str:
        return f"{self.plan.name} {self.ref.deployment}:{self.image.rsplit(':', 1)[-1]}"

    def ref_for(self, phase: Phase) -> TargetRef:
        if phase.environment is Environment.STAGING:
            return TargetRef(self.plan.namespace(phase), self.ref.deployment, self.ref.container)
        return self.ref

    def save(self) -> None:
        annotate_release(self.ref.namespace, self.ref.deployment, self.release.annotations())

    def record(self, event: str, **details: Any) -> None:
        rt = runctx.get()
        entry = {"event": event, "wall": time.time(), "plan_time": rt.clock.now(), **details}
        self.events.append(entry)
        rt.tell_event(entry)

    def notify(
        self,
        key: str,
        kind: Kind,
        text: str,
        *,
        severity: Severity = Severity.INFO,
        phase: str | None = None,
        fields: dict[str, str] | None = None,
        links: list[tuple[str, str]] | None = None,
        background: bool = False,
        actions: list[tuple[str, str, str]] | None = None,
    ) -> None:
        """Post once per ``key``. ``background``: do not wait for Slack (a rollback must not
        wait on a slow or failing chat service); ``flush`` collects the outcome."""
        if key in self.release.notified:
            return
        threads = runctx.get().notifier.threads
        for rollout, ts in self.release.slack_thread.items():
            threads.setdefault(rollout, ts)
        notification = Notification(
            kind=kind, severity=severity, rollout=self.release.id, text=text, phase=phase, fields=fields or {},
            links=links or [], actions=actions or [],
        )
        if background:
            self._pending.append((key, notification, post_notification.submit(notification)))
            return
        self._delivered(key, notification, post_notification(notification))

    def flush(self) -> None:
        while self._pending:
            key, notification, future = self._pending.pop(0)
            self._delivered(key, notification, future.result())

    def _delivered(self, key: str, notification: Notification, delivery: Delivery) -> None:
        self.record(
            "notification", kind=notification.kind.value, severity=notification.severity.value,
            phase=notification.phase, text=notification.text, delivered=delivery.ok, error=delivery.error,
        )
        self.release.notified.append(key)
        threads = runctx.get().notifier.threads
        if self.release.id in threads:
            self.release.slack_thread = {self.release.id: threads[self.release.id]}
        self.save()

    def ui_link(self) -> list[tuple[str, str]]:
        ui = runctx.get().ui_url
        if ui and self.flow_run_id:
            return [("Open in Prefect", f"{ui.rstrip('/')}/runs/flow-run/{self.flow_run_id}")]
        return []
