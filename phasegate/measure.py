"""One gate round: run every query of a phase at once and keep each answer as data.

Design decisions:

* Queries run concurrently on one long-lived thread pool shared by every round (starting
  a pool's threads each round was a cost per round for nothing). Each query waits on the
  network and Prometheus, not on the CPU, so a round of N gates costs about as much as its
  slowest query; the pool is wide enough for a whole round of the seed's plan (30 queries)
  to be in flight at once.
* Provider errors become ``Sample`` data, never exceptions (Argo Rollouts stores the
  provider error on the measurement). The caller decides what an error means: a rejected
  query is a plan error (``rejected=True``), an outage is retried, no data is Inconclusive.
* Even an unexpected exception (a provider bug) is recorded rather than raised, so one bad
  gate cannot hide the other gates' answers from the evidence table.
* Pure: no HTTP library here; the provider is any ``ports.MetricsProvider``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from phasegate import errors
from phasegate.ports import MetricsProvider

K = TypeVar("K", bound=Hashable)

DEFAULT_MAX_WORKERS = 64

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DEFAULT_MAX_WORKERS, thread_name_prefix="gate-query")
        return _pool


@dataclass(frozen=True)
class Sample:
    """The answer to one query: a value, or why there is none."""

    value: float | None
    error: str | None = None
    no_data: bool = False
    rejected: bool = False
    elapsed: float = 0.0
    started: float = 0.0

    @property
    def ok(self) -> bool:
        return self.value is not None


def sample(provider: MetricsProvider, promql: str) -> Sample:
    """Run one query; every failure becomes a field of the returned ``Sample``."""
    started = time.monotonic()
    value: float | None = None
    error: str | None = None
    no_data = rejected = False
    try:
        value = float(provider.query(promql))
    except errors.NoData as exc:
        error, no_data = str(exc), True
    except errors.QueryRejected as exc:
        error, rejected = str(exc), True
    except errors.PhasegateError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        error = f"unexpected {type(exc).__name__}: {exc}"
    return Sample(value, error, no_data, rejected, time.monotonic() - started, started)

def collect(
    provider: MetricsProvider, queries: Mapping[K, str], max_workers: int = DEFAULT_MAX_WORKERS
) -> dict[K, Sample]:
    """Run all ``queries`` concurrently; return a ``Sample`` per key, in the input's order."""
    if not queries:
        return {}
    workers = max(1, min(max_workers, len(queries)))
    if workers == 1:
        return {key: sample(provider, promql) for key, promql in queries.items()}
    if max_workers < DEFAULT_MAX_WORKERS:
        # A caller asking for less concurrency than the shared pool gives gets its own pool.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gate-query") as pool:
            futures = {key: pool.submit(sample, provider, promql) for key, promql in queries.items()}
            return {key: future.result() for key, future in futures.items()}
    shared = _shared_pool()
    futures = {key: shared.submit(sample, provider, promql) for key, promql in queries.items()}
    return {key: future.result() for key, future in futures.items()}
