"""A throwaway PostgreSQL on 127.0.0.1 for the scale bench: Debian's ``postgresql`` binaries,
a temp data dir, a random port, stopped by PID.

Postgres refuses to run as root, so as root the server runs as the ``postgres`` user the
Debian package creates (its data dir is handed to that user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} not found: install Debian's postgresql (make bench-deps does, as root)")


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="phasegate-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._as: dict[str, object] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.root, **self._as)  # type: ignore[call-overload]

    def start(self, timeout: float = 30.0) -> PostgresServer:
        data = self.root / "data"
        self._run(_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        log = (self.root / "postgres.log").open("wb")
        # A hundred flow runs and one API server: Prefect's pool per server process is small,
        # but the default of 100 connections leaves no room for psql while it runs.
        self._proc = subprocess.Popen(
            [_binary("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.root), "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **self._as,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + timeout
        while subprocess.run([_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postgres did not start:\n" + (self.root / "postgres.log").read_text()[-2000:])
            time.sleep(0.2)
        self._run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect")
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # SIGINT is Postgres' "fast shutdown": roll back clients, stop at once.
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
