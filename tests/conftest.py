"""Shared fixtures live in tests/fixtures/, one plugin module per real part we start."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.prometheus",
    "tests.fixtures.cluster",
    "tests.fixtures.backends",
    "tests.fixtures.slack",
    "tests.fixtures.prefect",
    "tests.fixtures.prefect_server",
]

# Property tests judge behaviour, not speed: a wall-clock deadline per example fails them on
# a loaded 2-core runner (speed goals live in bench/).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("phasegate", deadline=None)
_hypothesis_settings.load_profile("phasegate")


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Every Prefect server of the session is down by now (session fixtures are torn down
    with the last test), so events still queued in this process can go nowhere; Prefect
    would retry each for ~8 s at interpreter exit. Drop them so the run ends when the tests
    do. tests/fixtures/prefect.py keeps them from piling up in the first place."""
    import sys

    if "prefect.events.worker" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker

    for worker in list(EventsWorker._instances.values()):
        while True:
            try:
                item = worker._queue.get_nowait()
            except Exception:  # queue.Empty: nothing left to drop
                break
            worker._queue.task_done()
            if item is None:  # the stop signal: the worker must still see it, or exit waits forever
                worker._queue.put_nowait(None)
                break
