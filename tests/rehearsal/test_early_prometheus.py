"""The Prometheus ``phasegate rehearse`` starts before it imports its world: the world takes
that very process, a server started otherwise is never used, and none outlives the command.

Prometheus hands new targets to its scrapers on 5 s ticks counted from its own start, so the
sooner it starts the sooner every gate round of the rehearsal can come (bench/rehearse_startup.py
times it); what these tests hold is that starting it early changes nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phasegate.plan import load_plan
from phasegate.rehearsal import prometheus as prom
from phasegate.rehearsal.world import SCRAPE_SECONDS, world

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is no server; the world reaps its own child, so this only guards the check.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.usefixtures("prometheus_binary")
def test_the_world_scrapes_with_the_prometheus_started_early_and_stops_it() -> None:
    prom.start_early()
    early = prom._early
    assert early is not None and early.pid is not None
    with world(load_plan(SEED)) as w:  # warm: Prometheus has a window of every seeded pod
        assert w.prometheus is early
        assert w.prometheus.scraped_for(f"{4 * SCRAPE_SECONDS:g}s", 4), "the early server scrapes the world's pods"
        pid = w.prometheus.pid
    assert pid is not None and not _alive(pid)
    assert prom._early is None, "a server is taken once"


@pytest.mark.usefixtures("prometheus_binary")
def test_an_early_server_configured_otherwise_is_stopped_not_used() -> None:
    prom.start_early(scrape_interval=2 * SCRAPE_SECONDS)
    early = prom._early
    assert early is not None and early.pid is not None
    pid = early.pid
    assert prom.take_early(SCRAPE_SECONDS) is None
    assert not _alive(pid)
    prom.start_early()
    early = prom._early
    assert early is not None and early.pid is not None
    pid = early.pid
    assert prom.take_early(SCRAPE_SECONDS, basic_auth=("phasegate", "s3cret")) is None, \
        "a world that demands auth never gets an open server"
    assert not _alive(pid)


@pytest.mark.usefixtures("prometheus_binary")
def test_a_rehearsal_refused_for_bad_input_leaves_no_prometheus_behind(tmp_path: Path) -> None:
    # TMPDIR is where every server the command starts keeps its files: what is left there, and
    # any process still running from there, outlived the command.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "phasegate.entry.cli", "rehearse", str(SEED), "--scenario",
                             "no-such-scenario"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no-such-scenario" in result.stdout + result.stderr
    assert not list(tmp_path.glob("phasegate-prometheus-*"))
    survivors = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(tmp_path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    survivors.append(proc.name)
            except OSError:  # gone meanwhile
                continue
    assert not survivors, f"processes outlived the command: {survivors}"
