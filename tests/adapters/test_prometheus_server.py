"""PrometheusServer: loopback only, stopped by PID, restartable with its data, backfillable."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import pytest

from phasegate import errors
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.rehearsal.prometheus import BackfillSample, PrometheusServer, to_openmetrics


def test_server_binds_loopback_and_stops_by_pid(prometheus_binary: str) -> None:
    server = PrometheusServer(binary=prometheus_binary)
    try:
        server.start()
        assert server.url.startswith("http://127.0.0.1:")
        pid = server.pid
        assert pid is not None
        server.stop()
        assert not server.running
        # The PID is gone (or a zombie reaped): signal 0 fails.
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive
    finally:
        server.close()


def test_restart_keeps_port_and_data(prometheus_binary: str) -> None:
    now = time.time()
    with PrometheusServer(binary=prometheus_binary) as server:
        server.backfill([BackfillSample("kept", (("a", "b"),), now - 7200 + i * 60, 1.0) for i in range(60)])
        port = server.port
        server.restart()
        assert server.port == port
        assert server.provider().query("count_over_time(kept[3h])") == 60


def test_backfill_of_three_days_is_queryable_before_its_own_start(prometheus_binary: str) -> None:
    # The < 2 s goal for this is reported by bench-style timing, not asserted: CI boxes vary.
    end = time.time() - 3600
    samples = [
        BackfillSample("history", (("track", t),), end - i * 60, float(i)) for t in ("stable", "canary") for i in range(4320)
    ]
    with PrometheusServer(binary=prometheus_binary) as server:
        blocks = server.backfill(samples)
        assert blocks
        assert server.provider().query('count_over_time(history{track="canary"}[4d])') == 4320


def test_openmetrics_text_escapes_label_values_and_ends_with_eof() -> None:
    text = to_openmetrics([BackfillSample("m", (("l", 'a"b\\c'),), 10.0, 1.5)])
    assert 'm{l="a\\"b\\\\c"} 1.5 10.000' in text
    assert text.endswith("# EOF\n")


def test_basic_auth_is_demanded_and_the_server_itself_authenticates(prometheus_binary: str) -> None:
    with PrometheusServer(binary=prometheus_binary, basic_auth=("phasegate", "pw-0123456789")) as server:
        assert "pw-0123456789" not in server.web_config_path.read_text()  # a bcrypt hash only
        assert server.provider().query("vector(1)") == 1.0  # start() got past /-/ready with it
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(server.url + "/api/v1/query?query=vector(1)", timeout=5)
        assert anonymous.value.code == 401
        wrong = PrometheusProvider(server.url, basic_auth=("phasegate", "not-the-pw-0123"))
        with pytest.raises(errors.ProviderUnavailable, match="refused the credentials"):
            wrong.query("vector(1)")
