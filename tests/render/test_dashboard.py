"""The Grafana dashboard rendered from the seed plan: structure, and every query parses on a real Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from phasegate import errors
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.plan import RolloutPlan, load_plan
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.render.dashboard import render_dashboard, to_json
from tests.fixtures.common import require_binary

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
CHECKED_IN = ROOT / "deployments/dashboards/token-refresh-locking.json"


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


@pytest.fixture(scope="module")
def dashboard(plan: RolloutPlan) -> dict:
    return render_dashboard(plan)


@pytest.fixture(scope="module")
def empty_prometheus() -> Iterator[PrometheusProvider]:
    with PrometheusServer(binary=require_binary("prometheus")) as server:
        provider = server.provider()
        yield provider
        provider.close()


def _targets(dashboard: dict) -> list[dict]:
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def test_checked_in_dashboard_is_what_the_renderer_produces(plan: RolloutPlan) -> None:
    assert CHECKED_IN.read_text() == to_json(render_dashboard(plan)), "run: phasegate render dashboard PLAN -o FILE"


def test_dashboard_has_the_seeds_four_panels_in_a_two_column_grid(dashboard: dict) -> None:
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles == ["Error Rate", "Lock Metrics", "Latency", "Double-Check Effectiveness"]
    assert [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]] == [(0, 0), (12, 0), (0, 8), (12, 8)]
    assert dashboard["schemaVersion"] == 39


def test_datasource_variable_is_a_prometheus_picker_that_every_query_uses(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in _targets(dashboard))


def test_namespace_variable_offers_the_plans_namespaces_production_first(dashboard: dict) -> None:
    namespace = next(v for v in dashboard["templating"]["list"] if v["name"] == "namespace")
    assert namespace["query"] == "bodhi,bodhi-staging"
    assert namespace["current"]["value"] == "bodhi"


def test_a_catalogue_metric_is_drawn_for_canary_and_stable(dashboard: dict) -> None:
    latency = next(p for p in dashboard["panels"] if p["title"] == "Latency")
    legends = [t["legendFormat"] for t in latency["targets"]]
    assert legends[:2] == ["lock acquisition p99 (canary)", "lock acquisition p99 (stable)"]
    assert 'pod=~"bodhi-server-canary-' in latency["targets"][0]["expr"]
    assert 'pod=~"bodhi-server-[' in latency["targets"][1]["expr"]
    assert latency["fieldConfig"]["defaults"]["unit"] == "ms"


def test_queries_use_grafana_variables_and_keep_legend_label_syntax(dashboard: dict) -> None:
    for target in _targets(dashboard):
        assert 'namespace="$namespace"' in target["expr"]
        assert "{{" not in target["expr"]
    errors = dashboard["panels"][0]["targets"][0]
    assert "[$__rate_interval]" in errors["expr"]
    assert errors["legendFormat"] == "{{type}} ({{pod}})"


def rejection(provider: PrometheusProvider, promql: str) -> str | None:
    """Prometheus' message if it rejects ``promql``: it has no parse-only endpoint, so the
    query is evaluated once; no data or several series are not parse errors."""
    try:
        provider.query(promql)
    except errors.QueryRejected as exc:
        return str(exc)
    except (errors.NoData, errors.MultipleSeries):
        pass
    return None


def test_every_target_expression_parses_on_a_real_prometheus(
    dashboard: dict, empty_prometheus: PrometheusProvider
) -> None:
    problems = {}
    for target in _targets(dashboard):
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", "bodhi")
        message = rejection(empty_prometheus, expr)
        if message is not None:
            problems[target["legendFormat"]] = message
    assert problems == {}


def test_a_broken_expression_is_reported_by_the_same_check(empty_prometheus: PrometheusProvider) -> None:
    # Guards the test above: the check must actually see a 400.
    assert rejection(empty_prometheus, "sum(rate(x[$__rate_interval]))") is not None

