"""The target's lock: one slot of a Prefect global concurrency limit, held with a lease.

Design decisions:

* The limit is created if it is missing (``ensure_lock``), as Prefect's docs advise for
  ``strict`` acquisition: a fresh Prefect server has none, and a rollout must not skip its
  lock because nobody created it by hand.
* Acquire, renew and release go through one API client made from the settings in force when
  the lock is taken, not through ``prefect.concurrency.sync.concurrency``. Prefect's helper
  hands acquisition to a process-wide service, one per limit name, whose client keeps the
  API of whoever used that name first: a second Prefect API in the same process (a test
  session's harness and a ``prefect server start``, or a worker process reconfigured) had
  the limit created on one server and its slot asked of the other — "must be created before
  acquiring slots", or a slot taken and never released on the wrong server.
* The lease is renewed in the background every quarter of its length; a failed renewal (a
  short Prefect API outage) is logged, not raised, so a rollback under way is never
  cancelled by its lock. The release record on the Deployment is the fence that keeps a
  second rollout out (``decide.resume_point``).
* Waiting for a held slot follows the server's ``Retry-After``, up to ``timeout_seconds``;
  then ``LockHeld``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import get_run_logger

LEASE_SECONDS = 60.0  # Prefect's shortest lease; a dead holder frees the target after it
RENEW_SECONDS = LEASE_SECONDS / 4  # three renewals may fail before the lease lapses
HTTP_LOCKED = 423


class LockHeld(TimeoutError):
    """Another run holds the target's slot, and did not free it within the timeout."""


def ensure_lock(name: str) -> None:
    """Create the target's global concurrency limit (1 slot) if it does not exist yet."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        _ensure(client, name)


def _ensure(client: Any, name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        # Two rollouts may race to create it; either creation leaves the one limit we need.
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextlib.contextmanager
def hold(name: str, timeout_seconds: float, lease_seconds: float = LEASE_SECONDS) -> Iterator[None]:
    """Hold the one slot of limit ``name`` (created if missing) for the body of the ``with``."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        _ensure(client, name)
        lease_id = _acquire(client, name, timeout_seconds, lease_seconds)
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(client, name, lease_id, lease_seconds, stop),
                                   name=f"lease {name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=10)
            try:
                client.release_concurrency_slots_with_lease(lease_id)
            except Exception as exc:  # the lease lapses on its own within lease_seconds
                _log().warning("could not release %s (%s); it frees itself within %.0f s", name, exc, lease_seconds)


def _acquire(client: Any, name: str, timeout_seconds: float, lease_seconds: float) -> UUID:
    from prefect.exceptions import PrefectHTTPStatusError

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=lease_seconds)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != HTTP_LOCKED:
                raise
            wait = float(exc.response.headers.get("Retry-After") or 1.0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockHeld(f"the concurrency slot of {name!r} is held by another run "
                               f"(waited {timeout_seconds:g} s)") from None
            time.sleep(max(0.05, min(wait, left)))
            continue
        body = response.json()
        if not body.get("limits"):  # deleted between _ensure and now
            raise LockHeld(f"the concurrency limit {name!r} disappeared while its slot was asked for")
        return UUID(body["lease_id"])


def _renew(client: Any, name: str, lease_id: UUID, lease_seconds: float, stop: threading.Event) -> None:
    while not stop.wait(min(RENEW_SECONDS, lease_seconds / 4)):
        try:
            client.renew_concurrency_lease(lease_id, lease_duration=lease_seconds)
        except Exception as exc:
            _log().warning("could not renew the lease on %s (%s); the rollout goes on", name, exc)


def _log() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a flow run (the renewer thread has no run context)
        import logging

        return logging.getLogger("phasegate.lock")
