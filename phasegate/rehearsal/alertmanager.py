"""A real Alertmanager on loopback (Debian's ``prometheus-alertmanager``), for the alert tests.

Design decisions:

* The real binary, as with Prometheus: grouping, ``repeat_interval`` repeats and ``resolved``
  notifications are Alertmanager's own behaviour, and they are exactly what the receiver
  must cope with.
* Clustering is switched off (``--cluster.listen-address=``): otherwise Alertmanager gossips
  on 0.0.0.0:9094, and a test binds loopback only.
* Stopped by its PID (terminate, then kill), never by name.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARIES = ("prometheus-alertmanager", "alertmanager")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary() -> str | None:
    return next((p for p in (shutil.which(b) for b in BINARIES) if p), None)


class AlertmanagerServer:
    """One Alertmanager routing every alert to one webhook URL."""

    def __init__(self, webhook_url: str, *, group_wait: str = "0s", group_interval: str = "1s",
                 repeat_interval: str = "2s", binary: str | None = None) -> None:
        self.binary = binary or find_binary() or BINARIES[0]
        self.root = Path(tempfile.mkdtemp(prefix="phasegate-alertmanager-"))
        self.port = _free_port()
        self.config_path = self.root / "alertmanager.yml"
        self.log_path = self.root / "alertmanager.log"
        config = {
            "route": {"receiver": "phasegate", "group_by": ["alertname", "plan"], "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": repeat_interval},
            "receivers": [{"name": "phasegate",
                           "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> AlertmanagerServer:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.path={self.root / 'data'}",
             f"--web.listen-address={self.address}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited during startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"alertmanager not ready after {timeout}s:\n{self.log_tail()}")

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as r:
            return list(json.loads(r.read()))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AlertmanagerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
