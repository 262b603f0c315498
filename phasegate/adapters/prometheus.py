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
* Client CPU per query is what limits a round on a fast network (queries overlap only while
  they wait, and the parsing holds the GIL): the proxy and CA-bundle environment is read
  once, here, instead of on every request (``requests`` scans the whole environment twice
  per call when ``trust_env`` is on), and fixed headers live on the session. Instant
  queries — every gate round — go straight to the session's own urllib3 connection pool
  (the one ``requests`` would pick, with its TLS settings: ``get_connection_with_tls_context``,
  the hook ``HTTPAdapter`` offers subclasses) instead of through ``Session.request``, which
  spends ~0.7 ms of CPU per call merging settings, hooks and cookies nobody here uses
  (measured: 1.06 → 0.39 ms per query). Range queries and a proxied Prometheus keep the
  ``prometheus-api-client`` path; both paths classify status codes in one function.
* Extra request headers (``headers``: ``X-Scope-OrgID`` for multi-tenant Mimir, Cortex or
  Thanos) go with every request; their values are treated as secrets, like credentials.
* Secrets (bearer token, basic-auth password) never reach a message or a ``repr``: errors
  are rebuilt from the status and reason, raised ``from None`` (a ``requests`` exception
  holds the request and its ``Authorization`` header), and scrubbed as a last line.
* A scalar result (``scalar(...)``, ``1 + 1``) and a one-element vector (``vector(0)``,
  ``sum(...)``) are both one number. NaN and ±Inf are ``NoData`` (Flagger: NaN counts as
  no values), so a ratio of two zero rates never passes a gate by accident.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from phasegate import errors

_REJECTED_STATUS = {400, 422}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
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
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra headers on every request, e.g. {\"X-Scope-OrgID\": \"tenant\"} for Mimir/Cortex/Thanos "
        "(PHASEGATE_PROMETHEUS_HEADERS as JSON); values are kept out of logs like credentials",
    )


def _env_ca_bundle() -> str | None:
    # What requests itself would read with trust_env on.
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


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
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
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
        extra = dict(headers or {})
        for name in extra:
            if not _HEADER_NAME.match(name) or name.lower() in ("authorization", "host", "content-length"):
                raise ValueError(f"header {name!r} cannot be set here (credentials go in bearer_token / basic_auth)")
        self.header_names = sorted(extra)
        self._secrets = [s for s in (bearer_token, basic_auth[1] if basic_auth else None, *extra.values()) if s]

        session = requests.Session()
        # The environment is read once here, not on every request (see the module docstring).
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(self.url)
        session.verify = ca_file if ca_file else (_env_ca_bundle() or True) if verify_tls else False
        session.hooks["response"].append(self._raise_for_status)
        session.headers.update(extra)
        if bearer_token:
            session.headers["Authorization"] = f"Bearer {bearer_token}"
        if basic_auth is not None:
            session.auth = basic_auth
        # read=False: a read timeout surfaces as requests.ReadTimeout, not a ConnectionError.
        retry = Retry(total=0, read=False, raise_on_status=False)
        self._client = PrometheusConnect(url=self.url, session=session, timeout=timeout, retry=retry)
        # Re-mount after PrometheusConnect's own adapter to size the pool for concurrent rounds.
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=max_connections)
        session.mount(self.url, adapter)
        self._session = session
        self._query_path = (parsed.path.rstrip("/") or "") + "/api/v1/query"
        self._pool = None
        if not session.proxies:
            prepared = requests.Request("GET", self.url + "/api/v1/query").prepare()
            self._pool = adapter.get_connection_with_tls_context(prepared, session.verify, None, None)
        self._pool_headers = dict(session.headers)
        if basic_auth is not None:
            self._pool_headers["Authorization"] = requests.auth._basic_auth_str(*basic_auth)
        self._pool_timeout = urllib3.Timeout(connect=timeout, read=timeout)

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
            headers={k: v.get_secret_value() for k, v in settings.headers.items()},
        )

    def __repr__(self) -> str:
        headers = f", headers={self.header_names}" if self.header_names else ""
        return f"PrometheusProvider(url={self.url!r}, timeout={self.timeout}, auth={self._auth_kind}{headers})"

    def close(self) -> None:
        self._session.close()
        if self._pool is not None:
            self._pool.close()

    # --- MetricsProvider -------------------------------------------------------------

    def query(self, promql: str) -> float:
        if self._pool is not None:
            result = self._pooled_query(promql)
        else:
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

    # --- SeriesFinder (preflight and doctor diagnostics) -------------------------------

    def series(self, match: str) -> list[Mapping[str, str]]:
        found = self._get("/api/v1/series", match, {"match[]": match, **self._recent()})
        return [dict(s) for s in found or []]

    def label_values(self, label: str, match: str) -> list[str]:
        params = {"match[]": match, **self._recent()}
        return sorted(str(v) for v in self._get(f"/api/v1/label/{label}/values", match, params) or [])

    def _recent(self) -> dict[str, str]:
        now = datetime.now(UTC).timestamp()
        return {"start": f"{now - 3600:.0f}", "end": f"{now:.0f}"}

    def _get(self, path: str, what: str, params: dict[str, str]) -> Any:
        def call(_: str) -> Any:
            response = self._session.get(self.url + path, params=params, timeout=self.timeout)
            return response.json()["data"]

        return self._call(call, what)

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

    def _pooled_query(self, promql: str) -> Any:
        path = self._query_path + "?" + urlencode({"query": promql, **self._params()})
        try:
            response = self._pool.urlopen(  # type: ignore[union-attr]
                "GET", path, headers=self._pool_headers, retries=False, redirect=False, timeout=self._pool_timeout,
            )
        except urllib3.exceptions.NewConnectionError as exc:
            raise errors.ProviderUnavailable(f"cannot reach Prometheus at {self.url}: {self._reason(exc)}") from None
        except urllib3.exceptions.TimeoutError:
            raise errors.ProviderUnavailable(f"Prometheus at {self.url} timed out after {self.timeout:g}s") from None
        except urllib3.exceptions.HTTPError as exc:
            raise errors.ProviderUnavailable(
                f"cannot reach Prometheus at {self.url}: {type(exc).__name__}"
            ) from None
        try:
            self._classify(response.status, response.reason or "", response.data)
            return json.loads(response.data)["data"]["result"]
        except errors.PhasegateError as exc:
            raise type(exc)(self._scrub(f"{exc}: {promql}")) from None
        except (ValueError, KeyError, TypeError) as exc:
            # A 200 that is not Prometheus JSON (a login page, a proxy).
            raise errors.ProviderUnavailable(
                f"unexpected response from Prometheus at {self.url}: {type(exc).__name__}"
            ) from None

    def _raise_for_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._classify(response.status_code, response.reason or "", response.content)

    def _classify(self, status: int, reason_phrase: str, content: bytes) -> None:
        """The core's error for an HTTP status (see the module docstring); nothing below 400."""
        if status < 400:
            return
        message = ""
        try:
            body = json.loads(content)
            if isinstance(body, dict):
                message = str(body.get("error", ""))
        except ValueError:
            message = content[:200].decode(errors="replace")
        if status in _REJECTED_STATUS:
            raise errors.QueryRejected(self._scrub(f"Prometheus rejected the query (HTTP {status}): {message}"))
        if status in (401, 403):
            reason = f"Prometheus at {self.url} refused the credentials (HTTP {status}, auth={self._auth_kind})"
        else:
            reason = f"Prometheus at {self.url} answered HTTP {status} {reason_phrase}"
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
