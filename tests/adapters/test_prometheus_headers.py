"""Prometheus-compatible multi-tenant backends (Mimir, Cortex, Thanos) need a tenant
header on every request. A proxy in front of the loopback Prometheus demands it, as their
gateways do; the values never show in a message or a repr."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phasegate import errors
from phasegate.adapters.prometheus import PrometheusProvider, PrometheusSettings
from phasegate.rehearsal.prometheus import PrometheusServer

TENANT = "tenant-7f3a9c"


class TenantProxy:
    """Forwards to ``upstream`` only requests carrying ``X-Scope-OrgID: TENANT``; 401 otherwise."""

    def __init__(self, upstream: str) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("X-Scope-OrgID"))
                if self.headers.get("X-Scope-OrgID") != TENANT:
                    body = json.dumps({"status": "error", "error": "no org id"}).encode()
                    self.send_response(401)
                else:
                    with urllib.request.urlopen(upstream + self.path, timeout=5) as r:
                        body = r.read()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(disposable_prometheus: PrometheusServer) -> Iterator[TenantProxy]:
    p = TenantProxy(disposable_prometheus.url)
    yield p
    p.close()


def test_headers_from_settings_go_with_every_kind_of_request(proxy: TenantProxy, monkeypatch) -> None:
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", proxy.url)
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_HEADERS", json.dumps({"X-Scope-OrgID": TENANT}))
    settings = PrometheusSettings()
    assert TENANT not in repr(settings) and TENANT not in str(settings.model_dump())
    provider = PrometheusProvider.from_settings(settings)
    assert provider.query("vector(1)") == 1.0  # instant: the pooled path
    assert provider.query_range("vector(1)", 1_700_000_000, 1_700_000_060, 30)  # prometheus-api-client's path
    provider.series("up")  # /api/v1/series: the doctor and preflight path
    assert set(proxy.seen) == {TENANT}
    assert TENANT not in repr(provider) and "X-Scope-OrgID" in repr(provider)
    provider.close()


def test_without_the_header_the_backend_refuses_and_the_message_says_why_without_values(proxy: TenantProxy) -> None:
    missing = PrometheusProvider(proxy.url, headers={"X-Scope-OrgID": "wrong-" + TENANT})
    with pytest.raises(errors.ProviderUnavailable) as refused:
        missing.query("vector(1)")
    assert "HTTP 401" in str(refused.value) and TENANT not in str(refused.value)
    assert not missing.is_online()
    missing.close()


@pytest.mark.parametrize("name", ["Authorization", "Host", "bad header"])
def test_headers_that_would_carry_credentials_or_break_requests_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be set here"):
        PrometheusProvider("http://127.0.0.1:9", headers={name: "x"})
