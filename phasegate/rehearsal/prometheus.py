"""A real Prometheus on loopback, for tests and ``phasegate rehearse``.

Design decisions:

* It runs Debian's ``prometheus`` binary, not a fake: gate queries, ``histogram_quantile``
  and HTTP errors then behave exactly as in production.
* Scrape targets come from a ``file_sd`` JSON file rather than ``static_configs``.
  Prometheus watches that file, so ``set_targets`` / ``set_target_groups`` add or remove
  exporters on a running server without a reload; one server can then serve a whole test
  session while the apps it scrapes come and go. ``set_target_groups`` takes groups with
  labels — the synthetic app's pods, labelled as prometheus-operator labels targets — and
  ``honor_labels`` is off as there: a series cannot claim a namespace or pod of its own.
* ``backfill`` writes TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``.
  A running 2.42 only picks up new blocks on its next periodic reload (about a minute),
  so a backfill into a running server restarts it; overlapping blocks are accepted by
  default since 2.39, so no extra flag is needed.
* Every wait polls (``/-/ready``, a query returning data) instead of sleeping a fixed time:
  the first scraped sample arrives after one to a few scrape intervals, and that varies.
* The process is stopped by its PID (terminate, then kill), never by name.
* ``configure_alerting`` loads rules files and points the server at Alertmanagers, as a
  production Prometheus is configured (``rule_files``, ``alerting.alertmanagers``); a running
  server takes the new configuration through its lifecycle ``/-/reload``. Rules are
  evaluated every scrape interval, so an alert fires within one or two intervals of its data.
  It returns once the server reports every Alertmanager active: its notifier learns of them
  through service discovery some seconds after the reload, an alert that fires before then
  is dropped, and Prometheus sends it again only after ``--rules.alert.resend-delay`` (1 m).
* ``basic_auth`` makes the server demand a user and password, as a production Prometheus
  behind auth does, through Prometheus' own ``--web.config.file`` (2.42 supports it): a
  real 401 for a wrong password, not a proxy's. The file holds a bcrypt hash, never the
  password; the hash uses bcrypt's lowest cost, since the server checks it on every request
  and this is a loopback test server. Scraping is unaffected (it is outbound), and every
  request of our own (readiness, ``provider()``, ``wait_for_data``) sends the credentials.
"""

from __future__ import annotations

import atexit
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from phasegate import errors
from phasegate.adapters.prometheus import PrometheusProvider

_STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class BackfillSample:
    """One sample of synthetic history: metric name, labels, unix time, value."""

    metric: str
    labels: tuple[tuple[str, str], ...]
    timestamp: float
    value: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Wall seconds between a rehearsal's scrapes: the floor of its gate intervals, and a quarter
# of its shortest rate() window. Here, not in the world, so that the command can start the
# world's Prometheus before it imports the world.
REHEARSAL_SCRAPE_SECONDS = 0.5

_early: PrometheusServer | None = None


def start_early(scrape_interval: float = REHEARSAL_SCRAPE_SECONDS) -> None:
    """Start the Prometheus a rehearsal's world will take (``take_early``), without waiting.

    Prometheus hands new targets to its scrapers on fixed 5 s ticks counted from its own start
    (its discovery and scrape managers both throttle at 5 s; ``--scrape.discovery-reload-interval``
    cannot go below it), and the world is warm only a rate() window after the first tick that
    carried its pods. Started by the command's first lines rather than once the world is
    seeded, every one of those ticks, and so the first gate round, comes ~1.2 s sooner. An
    unclaimed server is stopped by its PID at exit."""
    global _early
    if _early is None:
        server = PrometheusServer(scrape_interval=scrape_interval)
        try:
            server.spawn()
        except OSError:  # no binary: the world's own start reports it, with its usual message
            server.close()
            return
        atexit.register(server.close)
        _early = server


def take_early(scrape_interval: float, basic_auth: tuple[str, str] | None = None) -> PrometheusServer | None:
    """The server ``start_early`` started, when it is configured as asked; once only."""
    global _early
    server, _early = _early, None
    if server is None:
        return None
    if server.scrape_interval != scrape_interval or basic_auth is not None or not server.running:
        server.close()
        return None
    return server


def to_openmetrics(samples: Iterable[BackfillSample]) -> str:
    """OpenMetrics text for ``promtool``: samples grouped by metric, ``# EOF`` at the end.

    Every family is typed ``gauge`` because promtool ignores the type for storage and a
    gauge name needs no ``_total`` suffix check.
    """
    by_metric: dict[str, list[BackfillSample]] = {}
    for s in samples:
        by_metric.setdefault(s.metric, []).append(s)
    lines: list[str] = []
    for metric, rows in by_metric.items():
        lines.append(f"# TYPE {metric} gauge")
        for s in sorted(rows, key=lambda r: r.timestamp):
            labels = ",".join(
                f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for k, v in s.labels
            )
            value = "NaN" if math.isnan(s.value) else repr(float(s.value))
            lines.append(f"{metric}{{{labels}}} {value} {s.timestamp:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class PrometheusServer:
    """Debian's ``prometheus`` on 127.0.0.1, a free port and a temporary data directory."""

    def __init__(
        self,
        *,
        targets: Sequence[str] = (),
        scrape_interval: float = 1.0,
        binary: str = "prometheus",
        promtool: str = "promtool",
        data_dir: str | Path | None = None,
        retention: str = "30d",
        startup_timeout: float = 30.0,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        """``basic_auth``: (user, password) every HTTP request must carry; ``None``: open."""
        self.binary = shutil.which(binary) or binary
        self.promtool = shutil.which(promtool) or promtool
        self.scrape_interval = scrape_interval
        self.retention = retention
        self.startup_timeout = startup_timeout
        self._own_dir = tempfile.mkdtemp(prefix="phasegate-prometheus-")
        self.root = Path(self._own_dir)
        self.data_dir = Path(data_dir) if data_dir else self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "prometheus.yml"
        self.targets_path = self.root / "targets.json"
        self.log_path = self.root / "prometheus.log"
        self.web_config_path = self.root / "web.yml"
        self.basic_auth = basic_auth
        self.rule_files: list[str] = []
        self.alertmanagers: list[str] = []
        self.port = 0
        self._targets_lock = threading.Lock()
        self._targets: list[str] = []
        self._groups: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None
        self._write_config()
        if basic_auth is not None:
            self._write_web_config(*basic_auth)
        self.set_targets(targets)

    # --- configuration ---------------------------------------------------------------

    def _write_config(self) -> None:
        interval = f"{max(1, round(self.scrape_interval * 1000))}ms"
        # JSON is valid YAML; no YAML library needed for a config we generate.
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "app",
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    # As a ServiceMonitor without honorLabels: target labels win over the exporter's.
                    "honor_labels": False,
                    "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
                }
            ],
        }
        if self.rule_files:
            config["rule_files"] = list(self.rule_files)
        if self.alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]}
        self.config_path.write_text(json.dumps(config, indent=2))

    def configure_alerting(self, rule_files: Sequence[str | Path], alertmanagers: Sequence[str], *,
                           wait: bool = True, timeout: float = 30.0) -> None:
        """Evaluate ``rule_files`` and send alerts to ``alertmanagers`` (``host:port``); reloads a running server.

        ``wait``: return once the server sends to every Alertmanager (else call
        ``wait_for_alertmanagers`` before the first alert may fire)."""
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.alertmanagers = list(alertmanagers)
        self._write_config()
        if self.running:
            request = urllib.request.Request(self.url + "/-/reload", method="POST", headers=self._headers())
            with urllib.request.urlopen(request, timeout=10) as r:
                if r.status != 200:
                    raise RuntimeError(f"prometheus refused the new configuration:\n{self.log_tail()}")
            if wait:
                self.wait_for_alertmanagers(timeout)

    def wait_for_alertmanagers(self, timeout: float = 30.0) -> None:
        """Poll until the server reports every configured Alertmanager active."""
        wanted = set(self.alertmanagers)
        deadline = time.monotonic() + timeout
        active: set[str] = set()
        while True:
            request = urllib.request.Request(self.url + "/api/v1/alertmanagers", headers=self._headers())
            with urllib.request.urlopen(request, timeout=10) as r:
                data = json.loads(r.read())["data"]
            active = {urllib.parse.urlsplit(a["url"]).netloc for a in data.get("activeAlertmanagers") or []}
            if wanted <= active:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"prometheus sends to {sorted(active)}, not yet to {sorted(wanted - active)}, "
                                   f"after {timeout:.0f} s")
            time.sleep(0.1)

    def _write_web_config(self, user: str, password: str) -> None:
        try:
            import bcrypt  # a dev dependency: only a rehearsal Prometheus with auth needs it
        except ImportError:
            raise RuntimeError("a PrometheusServer with basic_auth needs the 'bcrypt' package "
                               "(pip install -e '.[dev]')") from None
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        self.web_config_path.write_text(json.dumps({"basic_auth_users": {user: hashed}}, indent=2))

    def _headers(self) -> dict[str, str]:
        if self.basic_auth is None:
            return {}
        token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def set_targets(self, targets: Sequence[str]) -> None:
        """Replace the scraped ``host:port`` list; a running server notices within ~1 s."""
        self.set_target_groups([{"targets": list(targets), "labels": {}}] if targets else [])

    def set_target_groups(self, groups: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file_sd groups (``{"targets": [...], "labels": {...}}``)."""
        with self._targets_lock:
            tmp = self.targets_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(list(groups)))
            # Atomic rename: Prometheus must never read a half-written file.
            os.replace(tmp, self.targets_path)
            self._targets = [t for g in groups for t in g["targets"]]
            self._groups = [dict(g) for g in groups]

    @property
    def target_groups(self) -> list[dict[str, Any]]:
        return list(self._groups)

    @property
    def targets(self) -> list[str]:
        return list(self._targets)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PrometheusServer:
        """Start the server (or adopt one ``spawn`` started) and return once it is ready."""
        self.spawn()
        self._wait_ready()
        return self

    def spawn(self) -> PrometheusServer:
        """Start the process without waiting for it; ``start`` waits. A no-op when running."""
        if self.running:
            return self
        if not self.port:
            self.port = _free_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--web.enable-admin-api",
                *([f"--web.config.file={self.web_config_path}"] if self.basic_auth else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited during startup:\n{self.log_tail()}")
            try:
                ready = urllib.request.Request(self.url + "/-/ready", headers=self._headers())
                with urllib.request.urlopen(ready, timeout=1) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    # Up, but not taking our credentials: waiting would not change that.
                    self.stop()
                    raise RuntimeError(
                        f"prometheus refused its own basic-auth credentials:\n{self.log_tail()}"
                    ) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {self.startup_timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate by PID, kill if it lingers. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def kill(self) -> None:
        """SIGKILL by PID: an abrupt outage, as when a node dies."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def restart(self) -> PrometheusServer:
        """Stop and start on the same port with the same data directory (outage tests)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- data ------------------------------------------------------------------------

    def provider(self, timeout: float = 5.0) -> PrometheusProvider:
        """A provider on this server, with its credentials if it demands them."""
        return PrometheusProvider(self.url, timeout=timeout, basic_auth=self.basic_auth)

    def wait_for_data(self, query: str, timeout: float = 30.0, interval: float = 0.1) -> float:
        """Poll until ``query`` returns one finite value; return it."""
        provider = self.provider(timeout=min(5.0, timeout))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        try:
            while True:
                try:
                    return provider.query(query)
                except (errors.NoData, errors.ProviderUnavailable) as exc:
                    last = exc
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no data for {query!r} after {timeout}s (last: {last})")
                time.sleep(interval)
        finally:
            provider.close()

    def scraped_for(self, window: str, samples: int) -> set[tuple[str, str]]:
        """(namespace, pod) of every target scraped successfully ``samples`` times in ``window``."""
        query = urllib.parse.urlencode({"query": f"sum by (namespace, pod) (sum_over_time(up[{window}])) >= {samples}"})
        request = urllib.request.Request(f"{self.url}/api/v1/query?{query}", headers=self._headers())
        with urllib.request.urlopen(request, timeout=5) as r:
            result = json.loads(r.read())["data"]["result"]
        return {(s["metric"].get("namespace", ""), s["metric"].get("pod", "")) for s in result}

    def backfill(self, history: str | Iterable[BackfillSample], *, max_block_duration: str | None = None) -> list[str]:
        """Write history (OpenMetrics text or samples) as TSDB blocks; return the block ids.

        A running server is restarted so it loads the blocks now rather than at its next
        periodic reload. ``max_block_duration`` (e.g. ``"720h"``) writes weeks of history as
        a few large blocks instead of promtool's 2 h ones: 0.5 s instead of 25 s for four weeks.
        """
        text = history if isinstance(history, str) else to_openmetrics(history)
        if not text.rstrip().endswith("# EOF"):
            text = text.rstrip("\n") + "\n# EOF\n"
        was_running = self.running
        before = {p.name for p in self.data_dir.iterdir()}
        with tempfile.NamedTemporaryFile("w", suffix=".om", dir=self.root, delete=False) as f:
            f.write(text)
            input_path = f.name
        try:
            if was_running:
                self.stop()
            block = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
            result = subprocess.run(
                [self.promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", *block, input_path,
                 str(self.data_dir)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"promtool backfill failed: {result.stderr.strip() or result.stdout.strip()}")
        finally:
            os.unlink(input_path)
            if was_running:
                self.start()
        return sorted({p.name for p in self.data_dir.iterdir()} - before - {"wal", "chunks_head", "lock"})
