"""A real ``prefect server start`` (API + UI) on loopback, stopped by the PID it started with.

Prefect's test harness serves the API without the UI and always on SQLite. The browser test
needs the UI a person clicks, and the scale bench needs the server a team runs — on SQLite
or on Postgres — so both start the real command: its own port, its own PREFECT_HOME.

``TemporaryAPI`` is the other case: the throwaway API a ``phasegate rehearse`` without
``PREFECT_API_URL`` runs against. Prefect would start the very same server (its
``SubprocessASGIServer``: uvicorn on ``create_app``, UI and services off) on the first
client call, and wait for it, half a minute into a rehearsal. Started by the command's first
line instead, it boots (~5-10 s on 2 cores) while the rehearsal imports its flows and its
world waits for Prometheus' first scrapes; the command only waits for whatever is left. It
is stopped by its PID at interpreter exit, after Prefect's own exit handlers have sent their
last events and logs to it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 60.0  # ~7 s on a 2-core machine; a first start also copies the UI bundles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(url: str, home: Path, database_url: str | None = None) -> dict[str, str]:
    """Environment for the server and for any process (flow runner, CLI) that talks to it."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"{url}/api",
        # What the UI's JavaScript calls; without it the UI derives it from host and port.
        "PREFECT_UI_API_URL": f"{url}/api",
        "PREFECT_UI_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": url.rsplit(":", 1)[1],
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    }


class ServerFailed(RuntimeError):
    pass


@dataclass
class PrefectServer:
    """``start()`` / ``stop()``, or a context manager. ``database_url`` defaults to SQLite in ``home``."""

    home: Path
    database_url: str | None = None
    port: int = field(default_factory=_free_port)
    pid: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(server_env(self.url, self.home, self.database_url))
        return env

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = STARTUP_TIMEOUT) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        prefect = Path(sys.executable).with_name("prefect")
        cmd = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"]
        with self.log.open("wb") as out:
            # A new session, so that stopping it reaches uvicorn and nothing else of ours.
            self._proc = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ServerFailed(f"prefect server exited with {self._proc.returncode} before answering:\n"
                                   + self.log_tail())
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"prefect server did not answer /api/health in {timeout:.0f} s:\n"
                                   + self.log_tail())
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the server's own process group, then SIGKILL."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# What Prefect sets for the temporary server it starts itself (prefect.server.api.server).
_TEMPORARY_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_PORT_IN_USE = 3  # uvicorn's exit code when the port was taken between choosing and binding


class TemporaryAPI:
    """Prefect's temporary API server, started early and in the background; ``wait()`` before use."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> TemporaryAPI:
        """Spawn the server and return at once; nothing of Prefect is imported here."""
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            raise ServerFailed("prefect is not installed")
        app_dir = Path(spec.origin).parent.parent
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
        env.update(_TEMPORARY_ENV)
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self._ready = False
        return self

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``/api/health`` answers; a port taken meanwhile is chosen again."""
        if self._ready:
            return
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None:
                raise ServerFailed("the temporary Prefect server was never started")
            code = proc.poll()
            if code == _PORT_IN_USE:
                self.port = _free_port()
                self.start()
                continue
            if code is not None:
                raise ServerFailed(f"the temporary Prefect server exited with {code} before answering")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1.0).status_code == 200:
                    self._ready = True
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"the temporary Prefect server did not answer /api/health in {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the server's own process group, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


_THIS_PROCESS: TemporaryAPI | None = None


def temporary_api_for_this_process() -> TemporaryAPI | None:
    """Unless ``PREFECT_API_URL`` names a server, start a temporary one and point this process
    at it; call before Prefect is imported (it reads its settings then). The server is stopped
    at exit, after Prefect's own exit handlers (registered later, so run earlier) are done.
    Called again, it hands back the one already started."""
    global _THIS_PROCESS
    if _THIS_PROCESS is not None:
        return _THIS_PROCESS
    if os.environ.get("PREFECT_API_URL"):
        return None
    api = TemporaryAPI().start()
    atexit.register(api.stop)
    os.environ["PREFECT_API_URL"] = api.api_url
    # A temporary server serves no UI: no "open in the Prefect UI" link may point at it.
    os.environ["PREFECT_UI_URL"] = ""
    _THIS_PROCESS = api
    return api
