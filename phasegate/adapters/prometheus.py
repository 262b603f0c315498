"""``MetricsProvider`` for Prometheus, over ``prometheus-api-client``.

Design decisions:

* HTTP outcomes are classified once, in a ``requests`` response hook, into the errors the
  core understands: 400/422 → ``QueryRejected`` carrying Prometheus' own message (a plan
  error: retrying cannot help), 5xx and 401/403/404 → ``ProviderUnavailable`` (the server,
  proxy or credentials are wrong *now*; an operator can fix that without a new plan).
  The library's own ``PrometheusApiClientException`` only carries a ``repr`` of the body,
  so it is never relied on.
* The library's default ``Retry`` sleeps 1 + 2 + 4 s on a dead server. Retries belong to
  the Prefect task (``retry_condition_fn`` on ``TemporaryError``), so here a call fails
  fast and says why.
* One session is shared by the worker threads of ``measure.collect``; its connection pool
  is sized so a concurrent round of gates does not open and discard connections.
* Secrets (bearer token, basic-auth password) never reach a message or a ``repr``: errors
  are rebuilt from the status and reason, raised ``from None`` (a ``requests`` exception
  holds the request and its ``Authorization`` header), and scrubbed as a last line.
* A scalar result (``scalar(...)``, ``1 + 1``) and a one-element vector (``vector(0)``,
  ``sum(...)``) are both one number. NaN and ±Inf are ``NoData`` (Flagger: NaN counts as
  no values), so a ratio of two zero rates never passes a gate by accident.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from phasegate import errors

_REJECTED_STATUS = {400, 422}
_MAX_MESSAGE = 500


class PrometheusSettings(BaseSettings):
    """Where Prometheus is and how to authenticate; read from ``PHASEGATE_PROMETHEUS_*``."""

    model_config = SettingsConfigDict(env_prefix="PHASEGATE_PROMETHEUS_", extra="forbid")

    url: str = Field("http://127.0.0.1:9090", description="Base URL, e.g. https://prom.example/prometheus")
    timeout_seconds: float = Field(10.0, gt=0, description="Per-request timeout, also sent to Prometheus")
    bearer_token: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer ...'")
    username: str | None = Field(None, description="Basic-auth user (with password)")
    password: SecretStr | None = Field(None, description="Basic-auth password")
    ca_file: str | None = Field(None, description="PEM bundle to verify a private CA's certificate")
    verify_tls: bool = Field(True, description="False disables certificate checks (never in production)")


def _series_labels(series: dict[str, Any]) -> str:
    metric = series.get("metric") or {}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _finite(raw: Any, promql: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise errors.QueryRejected(f"query returned a non-number {raw!r}: {promql}") from None
    if math.isnan(value) or math.isinf(value):
        raise errors.NoData(f"query returned {raw}: {promql}")
    return value


class PrometheusProvider:
    """Prometheus HTTP API → one float per query, with the core's error vocabulary."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
        verify_tls: bool = True,
        max_connections: int = 32,
    ) -> None:
        parsed = requests.utils.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("Prometheus url must be http(s)://host[:port][/path]")
        if parsed.username or parsed.password:
            # Credentials in a URL end up in every error message and log line.
            raise ValueError("put Prometheus credentials in bearer_token / basic_auth, not in the url")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._auth_kind = "bearer" if bearer_token else "basic" if basic_auth else "none"
        self._secrets = [s for s in (bearer_token, basic_auth[1] if basic_auth else None) if s]

        session = requests.Session()
        session.verify = ca_file if ca_file else verify_tls
        session.hooks["response"].append(self._raise_for_status)
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
        # read=False: a read timeout surfaces as requests.ReadTimeout, not a ConnectionError.
        retry = Retry(total=0, read=False, raise_on_status=False)
        self._client = PrometheusConnect(
            url=self.url, headers=headers, auth=basic_auth, session=session, timeout=timeout, retry=retry
        )
        # Re-mount after PrometheusConnect's own adapter to size the pool for concurrent rounds.
        session.mount(self.url, HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=max_connections))
        self._session = session

    @classmethod
    def from_settings(cls, settings: PrometheusSettings) -> PrometheusProvider:
        basic = None
        if settings.username is not None:
            basic = (settings.username, settings.password.get_secret_value() if settings.password else "")
        return cls(
            settings.url,
            timeout=settings.timeout_seconds,
            bearer_token=settings.bearer_token.get_secret_value() if settings.bearer_token else None,
            basic_auth=basic,
            ca_file=settings.ca_file,
            verify_tls=settings.verify_tls,
        )

    def __repr__(self) -> str:
        return f"PrometheusProvider(url={self.url!r}, timeout={self.timeout}, auth={self._auth_kind})"

    def close(self) -> None:
        self._session.close()

    # --- MetricsProvider -------------------------------------------------------------

    def query(self, promql: str) -> float:
        result = self._call(self._client.custom_query, promql, params=self._params())
        if not isinstance(result, list):
            raise errors.ProviderUnavailable(f"unexpected response from Prometheus at {self.url}")
        if len(result) == 2 and not isinstance(result[0], dict):
            # resultType scalar (or string): [unix time, "value"]
            return _finite(result[1], promql)
        if not result:
            raise errors.NoData(f"query returned no series: {promql}")
        if len(result) > 1:
            listed = "; ".join(_series_labels(s) for s in result[:10])
            more = f" (and {len(result) - 10} more)" if len(result) > 10 else ""
            raise errors.MultipleSeries(f"query returned {len(result)} series {listed}{more}: {promql}")
        series = result[0]
        if "value" not in series:
            raise errors.QueryRejected(f"query returns a range vector; wrap it in rate() or similar: {promql}")
        return _finite(series["value"][1], promql)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        result = self._call(
            self._client.custom_query_range,
            promql,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=f"{step:g}s",
            params=self._params(),
        )
        if not result:
            raise errors.NoData(f"query returned no series between {start:.0f} and {end:.0f}: {promql}")
        if len(result) > 1:
            listed = "; ".join(_series_labels(s) for s in result[:10])
            raise errors.MultipleSeries(f"query returned {len(result)} series {listed}: {promql}")
        points = []
        for t, raw in result[0].get("values", []):
            value = float(raw)
            if math.isfinite(value):
                points.append((float(t), value))
        return points

    def is_online(self) -> bool:
        """Flagger's check: ``vector(1)`` evaluates to 1."""
        try:
            return self.query("vector(1)") == 1.0
        except errors.PhasegateError:
            return False

    # --- plumbing --------------------------------------------------------------------

    def _params(self) -> dict[str, str]:
        # Prometheus aborts evaluation itself instead of computing an answer nobody awaits.
        return {"timeout": f"{self.timeout:g}s"}

    def _call(self, method: Any, promql: str, **kwargs: Any) -> Any:
        try:
            return method(promql, **kwargs)
        except errors.PhasegateError as exc:
            # Raised by the response hook; add the query for context.
            raise type(exc)(self._scrub(f"{exc}: {promql}")) from None
        except requests.Timeout:
            raise errors.ProviderUnavailable(f"Prometheus at {self.url} timed out after {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            raise errors.ProviderUnavailable(
                f"cannot reach Prometheus at {self.url}: {self._reason(exc)}"
            ) from None
        except (requests.RequestException, ValueError, KeyError) as exc:
            # ValueError/KeyError: a 200 that is not Prometheus JSON (a login page, a proxy).
            raise errors.ProviderUnavailable(
                f"unexpected response from Prometheus at {self.url}: {type(exc).__name__}"
            ) from None

    def _raise_for_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code < 400:
            return
        message = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                message = str(body.get("error", ""))
        except ValueError:
            message = response.text[:200]
        status = response.status_code
        if status in _REJECTED_STATUS:
            raise errors.QueryRejected(self._scrub(f"Prometheus rejected the query (HTTP {status}): {message}"))
        if status in (401, 403):
            reason = f"Prometheus at {self.url} refused the credentials (HTTP {status}, auth={self._auth_kind})"
        else:
            reason = f"Prometheus at {self.url} answered HTTP {status} {response.reason}"
            if message:
                reason += f": {message}"
        raise errors.ProviderUnavailable(self._scrub(reason))

    @staticmethod
    def _reason(exc: Exception) -> str:
        # The innermost cause says "Connection refused"; the outer text repeats the URL.
        inner: BaseException = exc
        while inner.__cause__ is not None or (inner.args and isinstance(inner.args[0], BaseException)):
            inner = inner.__cause__ or inner.args[0]
        text = str(inner)
        return text.split(": ", 1)[-1] if "Connection" in type(inner).__name__ else text

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:_MAX_MESSAGE] if len(text) > _MAX_MESSAGE else text
