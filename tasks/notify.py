"""Posting notifications. A failed post is logged and recorded; it never fails the flow."""

from __future__ import annotations

from prefect import get_run_logger, task

from phasegate import runctx
from phasegate.notify import Delivery, Notification
from tasks.common import NO_CACHE


@task(name="post_notification", **NO_CACHE)
def post_notification(notification: Notification) -> Delivery:
    try:
        delivery = runctx.get().notifier.post(notification)
    except Exception as exc:  # the Notifier contract says never raise; a broken adapter must not stop a rollback
        delivery = Delivery(ok=False, error=f"{type(exc).__name__}")
    if not delivery.ok:
        get_run_logger().warning("notification %s not delivered: %s", notification.kind.value, delivery.error)
    return delivery
