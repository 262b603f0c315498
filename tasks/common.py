"""What every task module shares: the retry policy and the no-cache options."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NONE

from phasegate.errors import TemporaryError

# Adapters are not hashable inputs and a rollout step must never be skipped because a
# cached result exists, so no task caches.
NO_CACHE: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}
RETRY_DELAYS = [1, 2, 4]


def retry_if_temporary(task: Any, task_run: Any, state: Any) -> bool:
    """Retry 5xx, timeouts and lost connections; a permanent error fails at once."""
    try:
        state.result()
    except TemporaryError:
        return True
    except Exception:
        return False
    return False


# One I/O step that may meet a flaky API server: retried on temporary errors only.
RETRYING: dict[str, Any] = {
    "retries": len(RETRY_DELAYS), "retry_delay_seconds": RETRY_DELAYS, "retry_condition_fn": retry_if_temporary,
    **NO_CACHE,
}
