"""Backtest of the seed's canary-10pct phase over three days of backfilled history in a real
Prometheus: the injected bad hour is found, and a clean span after it advances."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from phasegate.analysis import Outcome
from phasegate.backtest import backtest
from phasegate.decide import Step
from phasegate.entry.render_cli import backtest_command
from phasegate.plan import RolloutPlan, Strategy, load_plan
from phasegate.rehearsal.prometheus import BackfillSample, PrometheusServer
from tests.fixtures.common import require_binary

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"
HOUR, STEP = 3600.0, 60.0
BAD_HOUR = 20  # hours after the start: inside a 48h soak from the start
CLEAN_FROM = 22  # hours after the start: 48 clean hours follow


def _history(start: float) -> list[BackfillSample]:
    samples: list[BackfillSample] = []
    steps = int(72 * HOUR / STEP)  # three days
    # Labelled as a ServiceMonitor labels a scraped pod: no deployment or track label.
    for track, pod in (("canary", "bodhi-server-canary-7d9c5b8f4-x2kqz"), ("stable", "bodhi-server-5f6d8b9c7d-4xj2p")):
        base = (("namespace", "bodhi"), ("pod", pod), ("container", "bodhi-server"), ("service", "bodhi-server"),
                ("job", "bodhi-server"))

        def counter(
            metric: str,
            per_step: Callable[[float], float],
            extra: tuple[tuple[str, str], ...] = (),
            base: tuple[tuple[str, str], ...] = base,
        ) -> None:
            total = 0.0
            for i in range(steps + 1):
                t = start + i * STEP
                samples.append(BackfillSample(metric, base + extra, t, total))
                total += per_step(t)

        def token_errors(t: float, canary: bool = track == "canary") -> float:
            return 1.0 if canary and start + BAD_HOUR * HOUR <= t < start + (BAD_HOUR + 1) * HOUR else 0.0

        counter("token_refresh_errors_total", token_errors, (("type", "token_not_active"),))
        counter("http_requests_total", lambda t: 600, (("code", "200"),))
        counter("http_requests_total", lambda t: 0, (("code", "500"),))
        counter("concurrency_lock_acquisitions_total", lambda t: 10000)
        counter("token_refresh_lock_timeouts_total", lambda t: 1)
        counter("token_refresh_calls_total", lambda t: 50)
        counter("token_expirations_total", lambda t: 50)
        for le, n in (("50", 580), ("100", 598), ("250", 600), ("+Inf", 600)):
            counter("api_response_time_ms_bucket", lambda t, n=n: n, (("le", le),))
    return samples


@pytest.fixture(scope="module")
def start() -> float:
    return float(int((time.time() - 73 * HOUR) // STEP * STEP))


@pytest.fixture(scope="module")
def history(start: float) -> Iterator[PrometheusServer]:
    server = PrometheusServer(binary=require_binary("prometheus"), promtool=require_binary("promtool"))
    try:
        server.backfill(_history(start), max_block_duration="720h")
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


def test_backtest_finds_the_hour_of_token_not_active_errors_and_rolls_back_the_canary(
    plan: RolloutPlan, history: PrometheusServer, start: float
) -> None:
    with closing(history.provider()) as provider:
        result = backtest(plan, "canary-10pct", provider, start, start + 72 * HOUR)
    decisive = result.decisive
    assert decisive is not None
    assert decisive.action.step is Step.ROLLBACK
    assert decisive.action.strategy is Strategy.CANARY_ONLY
    assert decisive.action.gates == ("token-not-active",)
    # The first round whose 5m window sees the first error, not later.
    assert start + BAD_HOUR * HOUR < decisive.at <= start + BAD_HOUR * HOUR + 10 * 60
    assert result.skipped == ("error-rate-not-higher",)


def test_a_clean_soak_advances_at_its_end(plan: RolloutPlan, history: PrometheusServer, start: float) -> None:
    with closing(history.provider()) as provider:
        clean = start + CLEAN_FROM * HOUR
        result = backtest(plan, "canary-10pct", provider, clean, clean + 49 * HOUR)
    assert result.final.step is Step.ADVANCE
    assert result.rounds[-1].at == clean + 48 * HOUR
    assert all(m.outcome is Outcome.SUCCESSFUL for r in result.rounds for m in r.measurements.values())


def test_backtest_command_prints_the_decision_and_exits_3_on_rollback(history: PrometheusServer, start: float) -> None:
    app = typer.Typer()
    app.command()(backtest_command)
    result = CliRunner().invoke(
        app,
        [str(SEED), "--from", str(start), "--to", str(start + 72 * HOUR), "--phase", "canary-10pct",
         "--prometheus-url", history.url],
    )
    assert result.exit_code == 3, result.output
    assert "rollback" in result.output and "token-not-active Failed" in result.output
