"""A real ``prefect server start`` (API + UI) on loopback, stopped by the PID it started with.

Prefect's test harness serves the API without the UI and always on SQLite. The browser test
needs the UI a person clicks, and the scale bench needs the server a team runs — on SQLite
or on Postgres — so both start the real command: its own port, its own PREFECT_HOME.
"""

from __future__ import annotations

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
