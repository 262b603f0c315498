"""A loopback server that speaks enough of the Slack Web API for tests and rehearsals.

Why a server rather than a mocked client: the adapter's retries, headers, JSON-vs-form
bodies and error parsing all live inside ``slack_sdk``'s HTTP layer, and only a real socket
exercises them. The server is the stdlib ``ThreadingHTTPServer`` on a random 127.0.0.1 port:
no extra dependency, starts in milliseconds, and the calling thread stays free to run the
code under test.

It implements ``auth.test``, ``chat.postMessage`` and ``chat.update`` with the behaviour the
adapter relies on (ts returned, channel names resolved to IDs, ``chat.update`` requiring
the ID, ``thread_ts`` accepted), checks blocks against Slack's documented limits the way
Slack does (``invalid_blocks``), and accepts incoming-webhook POSTs under ``/services/``.
Every request is recorded, including those answered with an injected 429 or 5xx, so tests
can count attempts. ``press`` plays Slack's side of interactivity: a button press delivered
to an app's Request URL, signed as Slack signs it (its own HMAC code, not phasegate's, so a
test cannot pass by sharing a bug with the verifier).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from phasegate import notify

REHEARSAL_TOKEN = "xoxb-phasegate-rehearsal"
WEBHOOK_PATH = "/services/T0PHASEGATE/B0REHEARSAL/rehearsal-webhook-secret"


@dataclass(frozen=True)
class Call:
    """One request the server received."""

    method: str  # Web API method ("chat.postMessage"), or "webhook"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int  # what the server answered


@dataclass
class Message:
    """A message as the server stores it; ``chat.update`` edits it in place."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict] | None
    thread_ts: str | None = None
    reply_broadcast: bool = False
    edits: int = 0


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: int | None
    method: str | None  # only a call to this method consumes it; None: any call


@dataclass
class _State:
    token: str | None
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)  # by ts
    webhook_posts: list[dict[str, Any]] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=dict)  # name -> ID
    failures: deque[_Failure] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ts_counter: itertools.count = field(default_factory=lambda: itertools.count(1))


def blocks_problem(blocks: Any) -> str | None:
    """Why Slack would reject ``blocks`` as ``invalid_blocks``, or ``None`` if it would not.

    Only the limits phasegate's renderer must respect; Slack checks more.
    """
    if not isinstance(blocks, list):
        return "blocks must be a list"
    if len(blocks) > notify.MAX_BLOCKS:
        return f"{len(blocks)} blocks > {notify.MAX_BLOCKS}"
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "header":
            if len(block["text"]["text"]) > notify.MAX_HEADER_TEXT:
                return f"block {i}: header text > {notify.MAX_HEADER_TEXT}"
        elif kind == "section":
            if "text" in block and len(block["text"]["text"]) > notify.MAX_SECTION_TEXT:
                return f"block {i}: section text > {notify.MAX_SECTION_TEXT}"
            fields = block.get("fields", [])
            if len(fields) > notify.MAX_FIELDS_PER_SECTION:
                return f"block {i}: {len(fields)} fields > {notify.MAX_FIELDS_PER_SECTION}"
            if any(len(f["text"]) > notify.MAX_FIELD_TEXT for f in fields):
                return f"block {i}: a field > {notify.MAX_FIELD_TEXT}"
            if "text" not in block and not fields:
                return f"block {i}: section needs text or fields"
        elif kind == "context":
            elements = block.get("elements", [])
            if not elements or len(elements) > notify.MAX_CONTEXT_ELEMENTS:
                return f"block {i}: context needs 1..{notify.MAX_CONTEXT_ELEMENTS} elements"
            if any(len(e.get("text", "")) > notify.MAX_SECTION_TEXT for e in elements):
                return f"block {i}: context element text > {notify.MAX_SECTION_TEXT}"
        elif kind not in {"divider", "actions", "image", "rich_text"}:
            return f"block {i}: unknown type {kind!r}"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Headers and body go out in two writes; with Nagle on the body would wait out the
    # client's delayed ACK (40 ms) on a kept-alive connection, as Slack's servers never make it.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request line to stderr, webhook secret path included.
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = _parse_body(self.headers.get("Content-Type", ""), raw)
        body.update(dict(parse_qsl(split.query)))
        payload: dict[str, Any] | str
        method = "webhook" if split.path.startswith("/services/") else split.path.removeprefix("/api/")
        with state.lock:
            failure = _take_failure(state, method)
            if failure:
                reason = "ratelimited" if failure.status == 429 else "injected"
                status, payload = failure.status, {"ok": False, "error": reason}
            elif method == "webhook":
                status, payload = _webhook(state, body)
            else:
                status, payload = 200, _api(state, method, self.headers.get("Authorization"), body)
            state.calls.append(Call(method, split.path, dict(self.headers.items()), body, status))
        self._reply(status, payload, failure)

    def _reply(self, status: int, payload: dict[str, Any] | str, failure: _Failure | None) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        if failure and failure.retry_after is not None:
            self.send_header("Retry-After", str(failure.retry_after))
        self.end_headers()
        self.wfile.write(data)


def _take_failure(state: _State, method: str) -> _Failure | None:
    if state.failures and state.failures[0].method in (None, method):
        return state.failures.popleft()
    return None


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    if content_type.startswith("application/json"):
        parsed = json.loads(raw)
        return parsed if isinstance(parsed, dict) else {"_json": parsed}
    form: dict[str, Any] = dict(parse_qsl(raw.decode()))
    # Form-encoded calls carry blocks as a JSON string, as Slack accepts them.
    if isinstance(form.get("blocks"), str):
        form["blocks"] = json.loads(form["blocks"])
    return form


def _webhook(state: _State, body: dict[str, Any]) -> tuple[int, str]:
    if not body.get("text") and not body.get("blocks"):
        return 400, "no_text"
    if "blocks" in body and blocks_problem(body["blocks"]):
        return 400, "invalid_blocks"
    state.webhook_posts.append(body)
    return 200, "ok"


def _api(state: _State, method: str, authorization: str | None, body: dict[str, Any]) -> dict[str, Any]:
    if not authorization or not authorization.startswith("Bearer "):
        return {"ok": False, "error": "not_authed"}
    if state.token is not None and authorization != f"Bearer {state.token}":
        return {"ok": False, "error": "invalid_auth"}
    if method == "auth.test":
        return {
            "ok": True,
            "url": "https://phasegate-rehearsal.slack.com/",
            "team": "phasegate rehearsal",
            "user": "phasegate",
            "team_id": "T0PHASEGATE",
            "user_id": "U0PHASEGATE",
            "bot_id": "B0PHASEGATE",
        }
    if method == "chat.postMessage":
        return _post_message(state, body)
    if method == "chat.update":
        return _update(state, body)
    return {"ok": False, "error": "unknown_method"}


def _post_message(state: _State, body: dict[str, Any]) -> dict[str, Any]:
    channel = body.get("channel")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    if not body.get("text") and not body.get("blocks"):
        return {"ok": False, "error": "no_text"}
    if "blocks" in body and blocks_problem(body["blocks"]):
        return {"ok": False, "error": "invalid_blocks"}
    channel_id = _channel_id(state, channel)
    ts = f"1700000000.{next(state.ts_counter):06d}"
    thread_ts = body.get("thread_ts")
    state.messages[ts] = Message(
        channel=channel_id,
        ts=ts,
        text=body.get("text"),
        blocks=body.get("blocks"),
        thread_ts=thread_ts,
        reply_broadcast=body.get("reply_broadcast") in (True, "1", "true"),
    )
    return {"ok": True, "channel": channel_id, "ts": ts, "message": {"text": body.get("text"), "ts": ts}}


def _update(state: _State, body: dict[str, Any]) -> dict[str, Any]:
    channel, ts = body.get("channel"), body.get("ts")
    # Slack's chat.update takes a channel ID only; a name is channel_not_found.
    if channel not in state.channels.values():
        return {"ok": False, "error": "channel_not_found"}
    message = state.messages.get(str(ts))
    if message is None or message.channel != channel:
        return {"ok": False, "error": "message_not_found"}
    if "blocks" in body and blocks_problem(body["blocks"]):
        return {"ok": False, "error": "invalid_blocks"}
    message.text = body.get("text", message.text)
    message.blocks = body.get("blocks", message.blocks)
    message.edits += 1
    return {"ok": True, "channel": channel, "ts": ts, "text": message.text}


def _channel_id(state: _State, channel: str) -> str:
    if channel in state.channels.values():
        return channel
    name = channel.removeprefix("#")
    return state.channels.setdefault(name, f"C{len(state.channels) + 1:08d}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class SlackServer:
    """A Slack Web API stand-in on 127.0.0.1; ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, token: str | None = REHEARSAL_TOKEN) -> None:
        """``token``: the only bearer token accepted (``invalid_auth`` otherwise); ``None``
        accepts any."""
        self.token = token
        self._state = _State(token=token)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SlackServer(url={self.url if self._server else None!r})"

    def start(self) -> SlackServer:
        self._server = _Server(self._state)
        # A short poll interval makes stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="slack-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> SlackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SlackServer is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Web API base URL, ending with ``/api/`` as ``SLACK_API_URL`` must."""
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    def env(self, *, webhook: bool = False) -> dict[str, str]:
        """Environment that points ``make_notifier`` here (bot by default, or the webhook)."""
        if webhook:
            return {"SLACK_WEBHOOK_URL": self.webhook_url}
        return {"SLACK_API_URL": self.url, "SLACK_BOT_TOKEN": self.token or REHEARSAL_TOKEN}

    def fail_next(
        self, count: int, status: int = 500, retry_after: int | None = None, *, method: str | None = None
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After`` if given).

        With ``method`` (e.g. ``"chat.update"``, ``"webhook"``) only calls to it fail; calls
        to others pass while such a failure is first in line.
        """
        with self._state.lock:
            self._state.failures.extend(_Failure(status, retry_after, method) for _ in range(count))

    def rate_limit_next(self, count: int = 1, retry_after: int = 1, *, method: str | None = None) -> None:
        """Answer the next ``count`` requests 429 with ``Retry-After`` (whole seconds, as Slack)."""
        self.fail_next(count, 429, retry_after, method=method)

    @property
    def calls(self) -> list[Call]:
        with self._state.lock:
            return list(self._state.calls)

    def methods(self) -> list[str]:
        """The methods called, in order, e.g. ``["chat.postMessage", "chat.update"]``."""
        return [c.method for c in self.calls]

    @property
    def messages(self) -> list[Message]:
        with self._state.lock:
            return list(self._state.messages.values())

    @property
    def webhook_posts(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.webhook_posts)

    def channel_id(self, name: str) -> str | None:
        with self._state.lock:
            return self._state.channels.get(name.removeprefix("#"))

    def press(self, message: Message, action_id: str, *, user_id: str, request_url: str, signing_secret: str,
              timestamp: float | None = None) -> tuple[int, dict[str, Any]]:
        """Press a button of ``message`` as Slack delivers it: a ``block_actions`` payload,
        form-encoded, POSTed to the app's Request URL and signed with ``signing_secret``
        (pass a wrong one, or an old ``timestamp``, to forge). Returns (status, JSON reply)."""
        import time
        import urllib.error
        import urllib.request
        from urllib.parse import urlencode

        button = next(e for b in message.blocks or [] if b.get("type") == "actions"
                      for e in b["elements"] if e.get("action_id") == action_id)
        payload = {"type": "block_actions", "user": {"id": user_id, "username": user_id.lower()},
                   "team": {"id": "T0PHASEGATE"}, "channel": {"id": message.channel},
                   "message": {"ts": message.ts}, "container": {"type": "message", "message_ts": message.ts},
                   "actions": [{"type": "button", "action_id": action_id, "value": button["value"],
                                "block_id": "actions", "action_ts": f"{time.time():.6f}"}]}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(int(time.time() if timestamp is None else timestamp))
        base = b"v0:" + stamp.encode() + b":" + body
        signature = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
        request = urllib.request.Request(request_url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
