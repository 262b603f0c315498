"""The run context: the world one rollout talks to, set at flow entry and read below it.

Design decisions:

* A ``ContextVar``, as kopf keeps its per-call state: the entry layer (``phasegate run``,
  a deployment's entry flow, ``phasegate rehearse``, a test) sets it with ``use(...)``
  before it starts a flow; flows and tasks read it with ``get()``. Prefect runs a sync
  subflow in its caller's thread and copies the context into its task-runner threads, so
  the value reaches every step of one rollout and no other: two rollouts with different
  clusters or Prometheus servers can run in one process, each in its own thread.
* Unset is an error (``RunContextMissing``), never a silently built real adapter. Building
  real adapters from settings happens once, in ``phasegate.entry.settings``.
* phasegate's own threads (the approval reminders, a background notification) start with an
  empty context in Python, so they are started through ``run_in_thread``, which copies it.
* ``Pacing`` holds the floors a rehearsal needs because its clock is compressed (a gate
  round faster than a scrape sees the same samples twice). In production every floor is 0.
* Observers (``on_pause``, ``on_event``) are how a rehearsal's approver and live view watch a
  run; they are typed Protocols, and a failing observer never breaks a rollout.
* Pure: no Prefect, Kubernetes or HTTP import; the adapters are the ports' Protocols.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from phasegate.checkroute import DEFAULT_CLUSTER_DOMAIN
from phasegate.clock import Clock
from phasegate.errors import PermanentError
from phasegate.notify import Notifier
from phasegate.ports import Cluster, MetricsProvider, ServiceProxy


class RunContextMissing(PermanentError):
    """A flow or task ran with no run context set: nobody said which world to talk to."""


class PauseObserver(Protocol):
    """Told of every pause that waits for a person: the flow run, what it waits on (a phase name,
    or ``checklist``), the form's field names, and why (``advance``, ``hold``, ``checklist``)."""

    def __call__(self, flow_run_id: str, subject: str, fields: list[str], why: str, /) -> None: ...


class EventObserver(Protocol):
    """Told of every event a rollout records (rounds, decisions, notifications)."""

    def __call__(self, event: Mapping[str, Any], /) -> None: ...


@dataclass(frozen=True)
class Pacing:
    """Wall-time floors for a compressed clock; all zero in production."""

    # A round faster than the scrape interval sees the same samples twice.
    min_interval_wall: float = 0.0
    # rate() needs two samples: the shortest range a {{window}} may render to.
    min_window_wall: float = 0.0
    # New pods need scraped samples in the window before the first round.
    min_warmup_wall: float = 0.0
    # Waits until the world's monitoring has a window of samples of every new pod, for at most
    # the seconds given (a rehearsal asks its Prometheus: discovery takes 0-5 s, not always
    # the whole floor); None: the warm-up is slept in full.
    until_scraped: Callable[[float], None] | None = None
    # A scaled 48 h soak is still several rounds.
    min_soak_wall: float = 0.0
    # A scaled 24 h approval pause is not a blink.
    min_approval_wall: float = 0.0
    # A pause nobody is expected to answer soon (a held phase, a halted rollout) lasts at
    # least this; None: min_approval_wall. A rehearsal answers advances at once, so their
    # floor is only a ceiling for an API slow under load, while a hold it leaves to time out
    # would wait out that whole ceiling.
    min_hold_wall: float | None = None
    approval_poll_seconds: int = 10


def _same_url(url: str) -> str:
    return url


@dataclass(frozen=True)
class RunContext:
    """Everything a rollout's flows and tasks talk to."""

    cluster: Cluster
    metrics: MetricsProvider
    notifier: Notifier
    clock: Clock
    pacing: Pacing = field(default_factory=Pacing)
    # Rewrites a check URL from the plan (cluster DNS) to one reachable from where the flow runs.
    url_for_check: Callable[[str], str] = _same_url
    # Outside the cluster: the API server's service proxy, which checks naming a Service
    # (``*.svc``) go through (``phasegate.checkroute``); None: every check URL is requested
    # as ``url_for_check`` gives it (inside the cluster, where Service names resolve).
    service_proxy: ServiceProxy | None = None
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    ui_url: str | None = None
    on_pause: PauseObserver | None = None
    on_event: EventObserver | None = None
    # Set when several loopback worlds share one Prefect API (rehearse --prove): each world's
    # target is a different Deployment, though all carry the plan's namespace and name.
    lock_scope: str = ""

    def with_(self, **changes: Any) -> RunContext:
        return replace(self, **changes)

    def tell_pause(self, flow_run_id: str, subject: str, fields: list[str], why: str) -> None:
        if self.on_pause is not None:
            _quietly(self.on_pause, flow_run_id, subject, fields, why)

    def tell_event(self, event: Mapping[str, Any]) -> None:
        if self.on_event is not None:
            _quietly(self.on_event, event)


def _quietly(observer: Callable[..., None], *args: Any) -> None:
    # An observer is a display or a rehearsal's approver: it must never break a rollout.
    with contextlib.suppress(Exception):
        observer(*args)


_current: ContextVar[RunContext | None] = ContextVar("phasegate_run_context", default=None)


def get() -> RunContext:
    ctx = _current.get()
    if ctx is None:
        raise RunContextMissing(
            "no run context: start flows through the phasegate command or a deployment's entry flow "
            "(phasegate.entry), or set one with phasegate.runctx.use(...)"
        )
    return ctx


def peek() -> RunContext | None:
    """The context if one is set (for code that works with or without one)."""
    return _current.get()


@contextlib.contextmanager
def use(ctx: RunContext) -> Iterator[RunContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def run_in_thread(target: Callable[..., Any], *args: Any, name: str | None = None) -> threading.Thread:
    """Start a daemon thread that sees this thread's run context."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)
    thread.start()
    return thread
