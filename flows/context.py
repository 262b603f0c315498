"""What one rollout's flows share: the plan, the target, the release record, and the
notification and timing bookkeeping that ends up in the report.

Notifications go through ``Rollout.notify`` with a key; a key already recorded in the
release annotations is not sent again, so a resumed rollout does not repeat itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from phasegate.notify import Delivery, Kind, Notification, Severity
from phasegate.plan import Environment, Phase, RolloutPlan
from phasegate.ports import TargetRef
from tasks.cluster import annotate_release
from tasks.notify import post_notification
from tasks.release import Release
from tasks.runtime import current


@dataclass
class Rollout:
    plan: RolloutPlan
    image: str
    ref: TargetRef  # the production Deployment: where the release record lives
    release: Release
    flow_run_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    started_wall: float = field(default_factory=time.time)
    _pending: list[tuple[str, Notification, Any]] = field(default_factory=list)

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
        rt = current()
        entry = {"event": event, "wall": time.time(), "plan_time": rt.clock.now(), **details}
        self.events.append(entry)
        if rt.on_event is not None:
            try:
                rt.on_event(entry)
            except Exception:  # a display must never break a rollout
                rt.on_event = None

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
    ) -> None:
        """Post once per ``key``. ``background``: do not wait for Slack (a rollback must not
        wait on a slow or failing chat service); ``flush`` collects the outcome."""
        if key in self.release.notified:
            return
        threads = getattr(current().notifier, "threads", None)
        if threads is not None and self.release.slack_thread:
            for rollout, ts in self.release.slack_thread.items():
                threads.setdefault(rollout, ts)
        notification = Notification(
            kind=kind, severity=severity, rollout=self.release.id, text=text, phase=phase, fields=fields or {},
            links=links or [],
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
        threads = getattr(current().notifier, "threads", None)
        if threads is not None and self.release.id in threads:
            self.release.slack_thread = {self.release.id: threads[self.release.id]}
        self.save()

    def ui_link(self) -> list[tuple[str, str]]:
        ui = current().ui_url
        if ui and self.flow_run_id:
            return [("Open in Prefect", f"{ui.rstrip('/')}/runs/flow-run/{self.flow_run_id}")]
        return []
