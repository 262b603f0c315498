"""The first error of a pod, on a real Prometheus, from an exporter that creates its
labelled counter child lazily — on the first increment, already at 1 — as every Prometheus
client library does. ``increase()`` needs two samples of a series, so the naive "zero
errors" query never sees that error; the seed plan's form must."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import make_server

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from phasegate import errors, gates
from phasegate.analysis import Outcome, Reading, evaluate
from phasegate.plan import load_plan
from phasegate.rehearsal.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
SEED = load_plan(ROOT / "deployments/plans/token-refresh-locking.yaml")
NS, POD = "bodhi", "bodhi-server-canary-7d9c5b8f4-x2kqz"
WINDOW = "6s"


class LazyExporter:
    """One pod's /metrics: steady traffic, and an error counter with no child until ``fail()``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "", ("code",), registry=self.registry)
        self.errors = Counter("token_refresh_errors", "", ("type",), registry=self.registry)
        self.server = make_server("127.0.0.1", 0, make_wsgi_app(self.registry), ThreadingWSGIServer,
                                  handler_class=_SilentHandler)
        self._stop = threading.Event()

    def fail(self) -> None:
        self.errors.labels("token_not_active").inc()

    def _traffic(self) -> None:
        while not self._stop.wait(0.1):
            self.requests.labels("200").inc(20)

    def __enter__(self) -> LazyExporter:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._traffic, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scraped(disposable_prometheus: PrometheusServer) -> Iterator[tuple[LazyExporter, PrometheusServer]]:
    with LazyExporter() as exporter:
        disposable_prometheus.set_target_groups([{
            "targets": [f"127.0.0.1:{exporter.server.server_port}"],
            "labels": {"namespace": NS, "pod": POD, "container": "bodhi-server", "service": "bodhi-server",
                       "endpoint": "http", "job": "bodhi-server"},
        }])
        disposable_prometheus.wait_for_data(f'count_over_time(http_requests_total{{pod="{POD}"}}[{WINDOW}]) >= 4',
                                            timeout=60)
        yield exporter, disposable_prometheus


def seed_query() -> str:
    trigger = next(t for t in SEED.phase("canary-10pct").triggers if t.name == "token-not-active")
    return gates.query(SEED, trigger, gates.Scope(NS, "bodhi-server", "canary"), "canary", WINDOW)


def read(provider, promql: str) -> Reading:
    try:
        return Reading(provider.query(promql))
    except errors.NoData:
        return Reading()


def test_the_seed_zero_gate_reads_zero_before_the_first_error_and_fails_on_it(scraped) -> None:
    exporter, server = scraped
    provider = server.provider()
    gate = next(t for t in SEED.phase("canary-10pct").triggers if t.name == "token-not-active")
    naive = f'sum(increase(token_refresh_errors_total{{type="token_not_active",pod="{POD}"}}[{WINDOW}]))'

    before = read(provider, seed_query())
    assert before.value == 0.0, "no error and live traffic must read 0, not no data"
    assert read(provider, naive).value is None  # the naive form: no series, so never a zero

    exporter.fail()
    server.wait_for_data(f'token_refresh_errors_total{{pod="{POD}"}}', timeout=30)
    seen_naive: list[float | None] = []
    deadline = time.monotonic() + 4  # less than one window: the error is inside it throughout
    while time.monotonic() < deadline:
        after = read(provider, seed_query())
        assert after.value is not None and after.value >= 1, after
        assert evaluate(gate, after).outcome is Outcome.FAILED
        seen_naive.append(read(provider, naive).value)
        time.sleep(0.5)
    # What the seed's old query saw of the same error: nothing, then nothing again.
    assert all(v in (None, 0.0) for v in seen_naive), seen_naive
    provider.close()


def test_a_selector_matching_no_pod_stays_no_data_rather_than_zero(scraped) -> None:
    _exporter, server = scraped
    provider = server.provider()
    wrong = seed_query().replace(NS, "elsewhere")
    assert read(provider, wrong).value is None
    provider.close()
