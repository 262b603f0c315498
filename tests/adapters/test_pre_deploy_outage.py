"""A Prometheus outage while the pre-deploy baseline is read is recorded as that error, and
every later round of the gate then reads Error — never "no pre-deploy baseline data"
(Inconclusive), which is what an outage used to look like. The tasks' plain functions run
with a runtime around a dead Prometheus port and a fake provider; no Prefect server."""

from __future__ import annotations

from unittest.mock import MagicMock

from phasegate import runctx
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.analysis import Outcome
from phasegate.clock import RealClock
from phasegate.gates import scope_for
from tasks.metrics import measure_gates, record_pre_deploy_baseline
from tests.core.builders import seed_plan
from tests.fixtures.common import free_port


class Fixed:
    def query(self, promql: str) -> float:
        return 40.0

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        return []

    def is_online(self) -> bool:
        return True


def test_an_outage_during_the_pre_deploy_baseline_reads_error_not_no_data() -> None:
    plan = seed_plan()
    phase = plan.phase("full")
    dead = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=1)
    with runctx.use(runctx.RunContext(cluster=MagicMock(), metrics=dead, notifier=MagicMock(), clock=RealClock())):
        recorded = record_pre_deploy_baseline.fn(plan, phase, scope_for(plan, phase))
    dead.close()
    assert set(recorded) == {"p99-latency-increase", "latency-unchanged"}
    assert all(isinstance(v, str) and "cannot reach Prometheus" in v for v in recorded.values()), recorded

    with runctx.use(runctx.RunContext(cluster=MagicMock(), metrics=Fixed(), notifier=MagicMock(), clock=RealClock())):
        found = {m.gate: m for m in measure_gates.fn(plan, phase, scope_for(plan, phase), recorded, 0.0)}
    for name in recorded:
        assert found[name].outcome is Outcome.ERROR and "pre-deploy baseline" in found[name].message
    assert found["zero-token-not-active"].outcome is Outcome.FAILED  # the other gates are still measured
