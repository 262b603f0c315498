"""Slack notifiers: a bot (one thread per rollout) and an incoming webhook, plus the factory.

Design decisions:

- One thread per rollout. The first event posts a parent message (the header: rollout,
  phase, status) and every event is a reply in its thread; the header is edited with
  ``chat.update`` so the channel shows one current line per rollout. The rollout → thread
  ``ts`` mapping is handed in by the caller (``threads``) so a resumed rollout continues
  its thread: the flow persists it in a Deployment annotation.
- Critical events (a rollback starting or failing, ``is_critical``) are also broadcast to
  the channel (``reply_broadcast``) and ping the plan's on-call handle: people who muted
  the thread still see them.
- ``post`` never raises (the ``Notifier`` contract): a notification failure must not block
  or fail a rollback. Failures are logged and returned as ``Delivery(ok=False)``.
- Retries are slack_sdk's own handlers, bounded: 429 honours ``Retry-After``, 500/503 and
  connection errors back off exponentially, at most ``max_retries`` times per call in total
  (the handlers share one retry count per request), so a Slack outage costs seconds, not
  the soak interval. A ``Retry-After`` above ``max_retry_after`` is not waited for: Slack
  can ask for a minute, and a rollback must not sleep that long to say it started.
- Secrets (bot token, webhook URL — the URL is a credential too) never reach logs, reprs,
  exceptions or ``Delivery.error``: our messages are scrubbed, and the SDK logs through a
  logger of ours that is kept at WARNING (its DEBUG lines print the webhook URL) and
  scrubbed as well.
- The token can come from a Prefect Secret block, loaded on first use: building a notifier
  (in preflight, in tests) needs no Prefect API, and a rehearsal without Slack never loads it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, MutableMapping

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from phasegate import errors, notify
from phasegate.adapters.console import ConsoleNotifier

log = logging.getLogger(__name__)

ENV_BOT_TOKEN = "SLACK_BOT_TOKEN"
ENV_WEBHOOK_URL = "SLACK_WEBHOOK_URL"
ENV_API_URL = "SLACK_API_URL"  # Web API base URL, ending with "/" (the loopback server's .url)
ENV_CHANNEL = "SLACK_CHANNEL"  # overrides the plan's channel

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_MAX_RETRIES = 3  # per API call, 429s and 5xx together
DEFAULT_RETRY_BACKOFF = 0.5  # seconds; doubles per retry: 0.5, 1, 2
DEFAULT_TIMEOUT = 10  # seconds per HTTP request
DEFAULT_MAX_RETRY_AFTER = 10  # seconds; a longer Retry-After is a failed delivery, not a wait

REDACTED = "[redacted]"


class SlackConfigError(errors.PermanentError):
    """Slack is configured in a way that cannot work (no channel for a bot, bad API URL)."""


# --- secret scrubbing ------------------------------------------------------------------

class _Scrubber(logging.Filter):
    """Replaces every registered secret in log records and strings.

    One per process: secrets are registered as they are loaded, and the SDK logger filter
    must know all of them whichever notifier is logging.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        # Very short values would redact ordinary words; no real token or URL is that short.
        if len(secret) >= 8:
            with self._lock:
                self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self(record.getMessage())
        record.args = None
        return True


scrub = _Scrubber()
log.addFilter(scrub)

_sdk_log = logging.getLogger(__name__ + ".sdk")
_sdk_log.setLevel(logging.WARNING)
_sdk_log.addFilter(scrub)


def _describe(exc: BaseException) -> str:
    """A short, scrubbed description of a failure for logs and ``Delivery.error``."""
    if isinstance(exc, SlackApiError):
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        reason = data.get("error") or str(exc.response.data)[:200]
        return scrub(f"{exc.response.api_url.rsplit('/', 1)[-1]}: HTTP {exc.response.status_code}: {reason}")
    return scrub(f"{type(exc).__name__}: {exc}")


# --- retries ---------------------------------------------------------------------------

class _ProportionalJitter(Jitter):
    """Up to +50 % of the interval, so a short test backoff stays short.

    slack_sdk's RandomJitter adds up to a whole second to every retry.
    """

    def recalculate(self, duration: float) -> float:
        return duration * (1 + random.random() / 2)


class _BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler (sleeps ``Retry-After``), declining waits above ``max_wait``."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        headers = response.headers if response is not None else {}
        value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "0")
        try:
            # slack_sdk wraps header values in lists on the error path
            return float(value[0] if isinstance(value, list) else value) <= self.max_wait
        except ValueError:
            return False


def retry_handlers(
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff: float = DEFAULT_RETRY_BACKOFF,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> list[RetryHandler]:
    """slack_sdk's 429 (Retry-After), 500/503 and connection-error handlers, bounded."""
    interval = BackoffRetryIntervalCalculator(backoff_factor=backoff, jitter=_ProportionalJitter())
    return [
        _BoundedRateLimitRetryHandler(max_retries, max_retry_after),
        ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
        ConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
    ]


# --- secrets ---------------------------------------------------------------------------

def _secret_loader(block_name: str) -> Callable[[], str]:
    return lambda: load_secret(block_name)


def load_secret(block_name: str) -> str:
    """The value of the Prefect Secret block ``block_name``."""
    # Imported here: the library imports no Prefect at module level, and only a run that
    # actually posts with a block-held token needs the Prefect API.
    from prefect.blocks.system import Secret

    # _sync: post() is synchronous, but may be called from an async task, where a bare
    # load() would hand back a coroutine.
    secret: Secret = Secret.load(block_name, _sync=True)  # type: ignore[assignment, call-arg]
    return str(secret.get())


# --- bot -------------------------------------------------------------------------------

class SlackBotNotifier:
    """Posts through a bot token: one thread per rollout, header kept current."""

    def __init__(
        self,
        token: str | Callable[[], str],
        channel: str,
        *,
        mention: str | None = None,
        threads: MutableMapping[str, str] | None = None,
        base_url: str = DEFAULT_API_URL,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        """``token``: the bot token, or a function returning it on first use (a Secret block).

        ``threads``: rollout → thread ts, seeded by the caller to continue a thread and read
        back to persist it; updated in place.
        """
        if not channel:
            raise SlackConfigError("a Slack bot needs a channel: set it in the plan or SLACK_CHANNEL")
        if not base_url.endswith("/"):
            raise SlackConfigError(f"Slack API URL must end with '/': {base_url!r}")
        if isinstance(token, str):
            scrub.add(token)
        self._token_source = token
        self.channel = channel
        self.mention = mention
        self.threads: MutableMapping[str, str] = threads if threads is not None else {}
        self.base_url = base_url
        self._retry = (max_retries, retry_backoff)
        self._timeout = timeout
        self._client: WebClient | None = None
        self._channel_id: str | None = None  # chat.update wants the ID, not "#name"
        self._status: dict[str, dict[str, str]] = {}  # rollout -> header fields
        # Flows post from several task threads; one rollout's header must be posted once.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SlackBotNotifier(channel={self.channel!r}, base_url={self.base_url!r})"

    def client(self) -> WebClient:
        """The WebClient, created (and the token loaded) on first use."""
        if self._client is None:
            source = self._token_source
            token = source if isinstance(source, str) else source()
            scrub.add(token)
            max_retries, backoff = self._retry
            self._client = WebClient(
                token=token,
                base_url=self.base_url,
                timeout=self._timeout,
                logger=_sdk_log,
                retry_handlers=retry_handlers(max_retries, backoff),
            )
        return self._client

    def check_auth(self) -> notify.AuthStatus:
        """``auth.test``: is the token valid (preflight)? Never raises."""
        try:
            response = self.client().auth_test()
        except Exception as exc:  # preflight reports, it decides nothing here
            detail = _describe(exc)
            log.warning("Slack auth.test failed: %s", detail)
            return notify.AuthStatus(ok=False, detail=detail)
        return notify.AuthStatus(ok=True, detail=f"team {response.get('team')!r}, bot {response.get('user')!r}")

    def post(self, notification: notify.Notification) -> notify.Delivery:
        try:
            with self._lock:
                return self._post(notification)
        except Exception as exc:  # the Notifier contract: never raise into a rollout
            error = _describe(exc)
            log.warning(
                "Slack notification %s for %s failed: %s", notification.kind.value, notification.rollout, error
            )
            return notify.Delivery(ok=False, channel=self._channel_id or self.channel, error=error)

    def _post(self, n: notify.Notification) -> notify.Delivery:
        client = self.client()
        status = notify.thread_status(self._status.get(n.rollout, {}), n)
        self._status[n.rollout] = status
        parent = self.threads.get(n.rollout)
        if parent is None:
            text, blocks = notify.header_blocks(n.rollout, status)
            response = client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
            parent = self.threads[n.rollout] = str(response["ts"])
            self._channel_id = response.get("channel") or self._channel_id
            header_current = True
        else:
            header_current = False
        critical = notify.is_critical(n)
        text, blocks = notify.to_blocks(n, mention=self.mention if critical else None)
        reply = client.chat_postMessage(
            channel=self._channel_id or self.channel,
            text=text,
            blocks=blocks,
            thread_ts=parent,
            reply_broadcast=critical,
            # Unfurled dashboard links would bury the event under previews.
            unfurl_links=False,
            unfurl_media=False,
        )
        self._channel_id = reply.get("channel") or self._channel_id
        if not header_current:
            self._update_header(client, n.rollout, parent, status)
        return notify.Delivery(ok=True, channel=self._channel_id, ts=str(reply["ts"]))

    def _update_header(self, client: WebClient, rollout: str, ts: str, status: Mapping[str, str]) -> None:
        # The reply is the notification; a stale header is cosmetic, so it is logged only.
        text, blocks = notify.header_blocks(rollout, status)
        try:
            client.chat_update(channel=self._channel_id or self.channel, ts=ts, text=text, blocks=blocks)
        except Exception as exc:
            log.warning("Slack header update for %s failed: %s", rollout, _describe(exc))


# --- webhook ---------------------------------------------------------------------------

class SlackWebhookNotifier:
    """Posts to an incoming webhook.

    A webhook can only post new messages to its fixed channel: no threads, no header to
    update, no broadcast, and ``Delivery.ts`` is unknown. Every event is a top-level
    message; critical ones still ping ``mention``. Prefer the bot for real rollouts.
    """

    def __init__(
        self,
        url: str,
        *,
        mention: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        scrub.add(url)
        self.mention = mention
        self._client = WebhookClient(
            url=url, timeout=timeout, logger=_sdk_log, retry_handlers=retry_handlers(max_retries, retry_backoff)
        )

        self.threads: MutableMapping[str, str] = {}  # a webhook posts top-level messages only

    def __repr__(self) -> str:
        return "SlackWebhookNotifier(url=[redacted])"

    def check_auth(self) -> notify.AuthStatus:
        # A webhook cannot be asked without posting: it is tried on the first notification.
        return notify.AuthStatus(ok=True, detail="incoming webhook (not checked before the first post)")

    def post(self, notification: notify.Notification) -> notify.Delivery:
        try:
            text, blocks = notify.to_blocks(
                notification, mention=self.mention if notify.is_critical(notification) else None
            )
            response = self._client.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
        except Exception as exc:  # the Notifier contract: never raise into a rollout
            error = _describe(exc)
        else:
            if response.status_code == 200:
                return notify.Delivery(ok=True, channel="webhook")
            error = scrub(f"webhook: HTTP {response.status_code}: {str(response.body)[:200]}")
        log.warning(
            "Slack webhook notification %s for %s failed: %s", notification.kind.value, notification.rollout, error
        )
        return notify.Delivery(ok=False, channel="webhook", error=error)


# --- choosing one ----------------------------------------------------------------------

def make_notifier(
    channel: str | None,
    mention: str | None,
    secret_block: str | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    threads: MutableMapping[str, str] | None = None,
) -> notify.Notifier:
    """The notifier the configuration asks for: bot, else webhook, else console.

    Bot when ``SLACK_BOT_TOKEN`` is set or ``secret_block`` names a Prefect Secret block
    holding the bot token (loaded on first post); webhook when ``SLACK_WEBHOOK_URL`` is set;
    otherwise the console, so a rehearsal or a laptop run shows what would be sent.
    ``SLACK_CHANNEL`` overrides ``channel``; ``SLACK_API_URL`` overrides the Web API URL.
    Raises ``SlackConfigError`` for a bot without a channel: that is a setup error for
    preflight, not a notification failure.
    """
    channel = env.get(ENV_CHANNEL) or channel
    token: str | Callable[[], str] | None = env.get(ENV_BOT_TOKEN) or None
    if token is None and secret_block:
        token = _secret_loader(secret_block)
    if token is not None:
        return SlackBotNotifier(
            token,
            channel or "",
            mention=mention,
            threads=threads,
            base_url=env.get(ENV_API_URL) or DEFAULT_API_URL,
        )
    if webhook_url := env.get(ENV_WEBHOOK_URL):
        return SlackWebhookNotifier(webhook_url, mention=mention)
    return ConsoleNotifier()
