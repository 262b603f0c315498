"""A plan selecting by {{pod_template_hash}}: each round asks the cluster for each track's
current ReplicaSet hash, and the queries carry it (a recording provider; no Prefect server)."""

from __future__ import annotations

from unittest.mock import MagicMock

from phasegate import runctx
from phasegate.clock import RealClock
from phasegate.gates import NO_HASH, scope_for
from phasegate.plan import load_plan_text
from tasks.metrics import measure_gates

PLAN = """
apiVersion: phasegate/v1
name: t
target: {deployment: web, container: web, namespaces: {production: prod}}
metrics:
  m: {query: 'sum(rate(x{namespace="{{namespace}}",pod_template_hash="{{pod_template_hash}}"}[{{window}}]))'}
phases:
  - {name: c, environment: production, canary_share: 10, soak: 1h, interval: 5m,
     triggers: [{name: t, metric: m, kind: delta, op: "<", threshold: 1, rollback: canary_only}]}
"""


class Recording:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def query(self, promql: str) -> float:
        self.asked.append(promql)
        return 1.0

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        return []

    def is_online(self) -> bool:
        return True


def test_each_round_reads_the_tracks_current_replicaset_hash() -> None:
    plan = load_plan_text(PLAN)
    phase = plan.phases[0]
    cluster = MagicMock()
    cluster.pod_template_hash.side_effect = lambda ns, name: {"web": "5f6d8b9c7d", "web-canary": "7d9c5b8f4"}.get(name)
    provider = Recording()
    with runctx.use(runctx.RunContext(cluster=cluster, metrics=provider, notifier=MagicMock(), clock=RealClock())):
        measure_gates.fn(plan, phase, scope_for(plan, phase), {}, 0.0)
    assert sorted(q.split('pod_template_hash="')[1].split('"')[0] for q in provider.asked) == ["5f6d8b9c7d",
                                                                                                "7d9c5b8f4"]
    cluster.pod_template_hash.side_effect = lambda ns, name: None  # no canary yet
    provider.asked.clear()
    with runctx.use(runctx.RunContext(cluster=cluster, metrics=provider, notifier=MagicMock(), clock=RealClock())):
        measure_gates.fn(plan, phase, scope_for(plan, phase), {}, 0.0)
    assert all(f'pod_template_hash="{NO_HASH}"' in q for q in provider.asked)
