"""PrometheusProvider against a real Prometheus; HTTP failures a real one cannot produce
(5xx, 401, a slow proxy) against pytest-httpserver."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from phasegate import errors
from phasegate.adapters.prometheus import PrometheusProvider, PrometheusSettings
from phasegate.ports import MetricsProvider
from phasegate.rehearsal.prometheus import PrometheusServer
from tests.fixtures.prometheus import Backfilled

SECRET = "s3cr3t-t0ken-value"


def test_provider_implements_the_metrics_provider_protocol(prometheus: PrometheusProvider) -> None:
    assert isinstance(prometheus, MetricsProvider)


@pytest.mark.parametrize(
    ("promql", "expected"),
    [("vector(0)", 0.0), ("scalar(vector(3))", 3.0), ("1 + 1", 2.0), ("sum(vector(2.5))", 2.5)],
)
def test_vector_and_scalar_results_are_one_number(prometheus: PrometheusProvider, promql: str, expected: float) -> None:
    assert prometheus.query(promql) == expected


def test_empty_result_is_no_data(prometheus: PrometheusProvider) -> None:
    with pytest.raises(errors.NoData, match="no series"):
        prometheus.query('http_requests_total{namespace="does-not-exist"}')


@pytest.mark.parametrize("promql", ["vector(0) / 0", "scalar(vector(0)) / 0", "vector(1) / 0", "-vector(1) / 0"])
def test_nan_and_infinity_are_no_data(prometheus: PrometheusProvider, promql: str) -> None:
    with pytest.raises(errors.NoData):
        prometheus.query(promql)


def test_two_series_are_multiple_series_listing_their_labels(prometheus: PrometheusProvider) -> None:
    with pytest.raises(errors.MultipleSeries, match=r'2 series .*code="200".*code="401"'):
        prometheus.query('sum by (code) (http_requests_total{namespace="pg-healthy",code=~"200|401"})')


def test_bad_promql_is_rejected_with_prometheus_message(prometheus: PrometheusProvider) -> None:
    with pytest.raises(errors.QueryRejected, match="parse error") as caught:
        prometheus.query("sum(rate(http_requests_total[5m]")
    assert isinstance(caught.value, errors.PermanentError)


def test_range_vector_query_is_rejected_as_a_plan_error(prometheus: PrometheusProvider) -> None:
    with pytest.raises(errors.QueryRejected, match="range vector"):
        prometheus.query('sum(http_requests_total{namespace="pg-healthy",code="200"})[1m:]')


def test_is_online_true_for_a_running_prometheus(prometheus: PrometheusProvider) -> None:
    assert prometheus.is_online()


def test_killed_prometheus_is_unavailable_and_a_restarted_one_recovers(disposable_prometheus: PrometheusServer) -> None:
    provider = disposable_prometheus.provider(timeout=2)
    assert provider.query("vector(1)") == 1.0
    disposable_prometheus.kill()
    with pytest.raises(errors.ProviderUnavailable, match="Connection refused") as caught:
        provider.query("vector(1)")
    assert isinstance(caught.value, errors.TemporaryError)
    assert not provider.is_online()
    disposable_prometheus.start()
    assert provider.is_online()
    assert provider.query("vector(1)") == 1.0


def test_query_range_returns_one_series_of_backfilled_history(backfilled_prometheus: Backfilled) -> None:
    provider = backfilled_prometheus.server.provider()
    end = backfilled_prometheus.end
    points = provider.query_range(
        'token_refresh_errors_total{track="canary"}', backfilled_prometheus.start, end, 3600
    )
    assert len(points) >= 71
    assert all(b[0] - a[0] == 3600 for a, b in itertools.pairwise(points))
    assert points[-1][1] > points[0][1]
    # Three days back: the history predates the server's own start.
    assert points[0][0] <= end - 2.9 * 86400


def test_query_range_of_two_series_is_multiple_series(backfilled_prometheus: Backfilled) -> None:
    provider = backfilled_prometheus.server.provider()
    with pytest.raises(errors.MultipleSeries):
        provider.query_range("token_refresh_errors_total", backfilled_prometheus.start, backfilled_prometheus.end, 3600)


# --- error paths only a fake server can produce ----------------------------------------


def test_5xx_is_provider_unavailable_with_prometheus_error(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query").respond_with_json(
        {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}, status=503
    )
    provider = PrometheusProvider(httpserver.url_for("/"), timeout=2)
    with pytest.raises(errors.ProviderUnavailable, match=r"HTTP 503.*TSDB not ready"):
        provider.query("vector(1)")


def test_unprocessable_query_is_rejected(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query").respond_with_json(
        {"status": "error", "errorType": "execution", "error": "found duplicate series for the match group"}, status=422
    )
    with pytest.raises(errors.QueryRejected, match="duplicate series"):
        PrometheusProvider(httpserver.url_for("/")).query("a / b")


def test_slow_server_times_out_as_provider_unavailable(httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response(json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}))

    httpserver.expect_request("/api/v1/query").respond_with_handler(slow)
    with pytest.raises(errors.ProviderUnavailable, match=r"timed out after 0\.2s"):
        PrometheusProvider(httpserver.url_for("/"), timeout=0.2).query("vector(1)")


def test_timeout_is_also_sent_to_prometheus(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query", query_string={"query": "vector(1)", "timeout": "3s"}).respond_with_json(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "1"]}]}}
    )
    assert PrometheusProvider(httpserver.url_for("/"), timeout=3).query("vector(1)") == 1.0


def test_bearer_token_is_sent_and_never_shown(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query", headers={"Authorization": f"Bearer {SECRET}"}).respond_with_json(
        {"status": "error", "error": f"token {SECRET} expired"}, status=401
    )
    provider = PrometheusProvider(httpserver.url_for("/"), bearer_token=SECRET)
    with pytest.raises(errors.ProviderUnavailable, match="refused the credentials") as caught:
        provider.query("vector(1)")
    shown = [str(caught.value), repr(caught.value), repr(provider)]
    assert all(SECRET not in text for text in shown)
    # Raised "from None": the requests exception, which holds the Authorization header, is not chained.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_basic_auth_is_sent_and_password_never_shown(httpserver: HTTPServer) -> None:
    # "user:s3cr3t-t0ken-value" in base64
    httpserver.expect_request(
        "/api/v1/query", headers={"Authorization": "Basic dXNlcjpzM2NyM3QtdDBrZW4tdmFsdWU="}
    ).respond_with_json({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}})
    settings = PrometheusSettings(url=httpserver.url_for("/"), username="user", password=SECRET)
    provider = PrometheusProvider.from_settings(settings)
    assert provider.query("scalar(vector(7))") == 7.0
    assert SECRET not in repr(provider) and SECRET not in repr(settings)


def test_non_prometheus_200_is_unavailable_not_a_crash(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query").respond_with_data("<html>login</html>", content_type="text/html")
    with pytest.raises(errors.ProviderUnavailable, match="unexpected response"):
        PrometheusProvider(httpserver.url_for("/")).query("vector(1)")


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="not in the url") as caught:
        PrometheusProvider(f"http://user:{SECRET}@127.0.0.1:9090")
    assert SECRET not in str(caught.value)


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", "https://prom.example/prometheus")
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_BEARER_TOKEN", SECRET)
    settings = PrometheusSettings()
    provider = PrometheusProvider.from_settings(settings)
    assert provider.url == "https://prom.example/prometheus"
    assert SECRET not in repr(settings) and SECRET not in repr(provider)
