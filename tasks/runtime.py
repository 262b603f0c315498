"""The adapters a flow run talks to, chosen once per process.

Flow parameters must stay JSON-serialisable (they are deployment parameters in
prefect.yaml), so adapters are not passed as parameters. A ``Runtime`` is installed for the
process instead: ``phasegate run`` builds one from settings (real cluster, Prometheus,
Slack), ``phasegate rehearse`` and the tests build one around the loopback emulator, the
synthetic app and a real Prometheus. Tasks fetch it with ``current()``.

One runtime serves every rollout in a process (a worker runs flow runs in their own
processes; ``bench/scale.py`` runs many rollouts in threads against one runtime). Two
different runtimes in one process at once are not supported: a flow picks up whichever is
installed when it next asks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phasegate.clock import Clock, RealClock
from phasegate.notify import Notifier
from phasegate.plan import RolloutPlan
from phasegate.ports import Cluster, MetricsProvider


@dataclass
class Runtime:
    cluster: Cluster
    metrics: MetricsProvider
    notifier: Notifier
    clock: Clock = field(default_factory=RealClock)
    # Shortest gate interval in wall seconds: a round faster than the scrape interval sees
    # the same samples twice.
    min_interval_wall: float = 0.0
    # Shortest range a {{window}} may render to, in wall seconds (rate() needs two samples).
    min_window_wall: float = 0.0
    # Wall-time floors for the soak: a warm-up before the first round, so the new pods have
    # scraped samples in the window, and a minimum length, so a scaled 48h is still several rounds.
    min_warmup_wall: float = 0.0
    min_soak_wall: float = 0.0
    # Wall-time floor for an approval pause (a scaled 24h would otherwise be a blink).
    min_approval_wall: float = 0.0
    approval_poll_seconds: int = 10
    # Rewrites a check URL from the plan (cluster DNS) to one reachable from here.
    url_for_check: Callable[[str], str] = field(default=lambda url: url)
    # Told about every approval pause: (flow_run_id, phase name, form field names, why it paused:
    # "advance" after a passed phase, "hold" when a person must judge unmet criteria).
    on_pause: Callable[[str, str, list[str], str], None] | None = None
    ui_url: str | None = None
    # Told about every event the rollout records (rounds, decisions, notifications): the
    # terminal view of `phasegate rehearse` is built from these.
    on_event: Callable[[dict[str, Any]], None] | None = None


_lock = threading.Lock()
_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime


def current() -> Runtime:
    runtime = _current
    if runtime is None:
        from tasks.settings import runtime_from_settings

        runtime = runtime_from_settings()
        install(runtime)
    return runtime


def installed() -> Runtime | None:
    """The runtime someone installed, without building one from settings."""
    return _current


def ensure(plan: RolloutPlan) -> Runtime:
    """The installed runtime, or — in a run started from a deployment, where nobody installed
    one — the real adapters from settings, with the plan's Slack channel and on-call handle."""
    if _current is None:
        from tasks.settings import runtime_from_settings

        install(runtime_from_settings(plan))
    return current()


@contextlib.contextmanager
def using(runtime: Runtime) -> Iterator[Runtime]:
    previous = _current
    install(runtime)
    try:
        yield runtime
    finally:
        install(previous)
