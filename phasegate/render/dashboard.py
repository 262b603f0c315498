"""A Grafana dashboard (classic JSON model, schemaVersion 39) rendered from the plan's
``dashboard`` block: the seed's four panels, each query taken from the plan.

Design decisions:

* Two template variables: ``datasource`` (type ``datasource``, any Prometheus) so the file
  imports into any Grafana without editing uids, and ``namespace``, a custom list of the
  plan's own namespaces (production first), so the same dashboard watches staging. A query
  variable would need a live Prometheus at import time to show anything.
* The Deployment name is rendered literally: the dashboard belongs to one plan, and the
  canary's series carry the same ``deployment`` label with ``track="canary"``.
* A panel query naming a ``metric`` is drawn once per track (canary and stable) with the
  track in its legend, because comparing the two is what a canary dashboard is for. A raw
  ``expr`` is drawn once; it groups by ``track`` itself where it wants to.
* ``{{window}}`` becomes ``$__rate_interval``, which Grafana sizes to the scrape interval and
  the zoom level; ``{{namespace}}`` becomes ``$namespace``. Legend text keeps Grafana's own
  ``{{label}}`` syntax untouched.
* Units: the panel's unit if the plan gives one, otherwise the metric catalogue's unit when
  all of a panel's metrics agree and Grafana knows it, otherwise ``short``.
* Two panels per row, 12 × 8 grid units each: the seed's four panels fill one screen.
"""

from __future__ import annotations

import json
import re
from typing import Any

from phasegate import gates, templates
from phasegate.plan import Panel, PanelQuery, RolloutPlan

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TRACKS = ("canary", "stable")
RATE_INTERVAL = "$__rate_interval"
PANEL_WIDTH, PANEL_HEIGHT, GRID_COLUMNS = 12, 8, 24
_WINDOW_PLACEHOLDER = re.compile(r"\{\{\s*window\s*\}\}")
# Catalogue units → Grafana unit ids.
_GRAFANA_UNITS = {"ms": "ms", "s": "s", "ratio": "percentunit", "errors": "short", "locks": "short"}


def grafana_expr(plan: RolloutPlan, template: str, track: str | None = None) -> str:
    """Render a plan template with Grafana variables in place of the namespace and window;
    without a track, ``{{pods}}`` selects both tracks' pods (as the plan's alerts do)."""
    # templates.render only accepts a PromQL duration for {{window}}; a Grafana variable goes in first.
    values = gates.alert_variables(plan, "5m") if track is None else gates.variables(
        plan, gates.Scope("$namespace", plan.target.deployment, track), track, "5m"
    )
    values["namespace"] = "$namespace"
    return templates.render(_WINDOW_PLACEHOLDER.sub(RATE_INTERVAL, template), values)


def _ref_id(n: int) -> str:
    letters = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def _targets(plan: RolloutPlan, query: PanelQuery) -> list[tuple[str, str]]:
    if query.metric is not None:
        template = plan.metrics[query.metric].query
        legend = query.legend or query.metric
        return [(grafana_expr(plan, template, track), f"{legend} ({track})") for track in TRACKS]
    assert query.expr is not None
    return [(grafana_expr(plan, query.expr), query.legend)]


def _unit(plan: RolloutPlan, panel: Panel) -> str:
    if panel.unit:
        return panel.unit
    units = {plan.metrics[q.metric].unit for q in panel.queries if q.metric is not None}
    if len(units) == 1 and all(q.metric is not None for q in panel.queries):
        return _GRAFANA_UNITS.get(units.pop(), "short")
    return "short"


def _panel(plan: RolloutPlan, panel: Panel, index: int) -> dict[str, Any]:
    targets: list[dict[str, Any]] = []
    for expr, legend in (t for q in panel.queries for t in _targets(plan, q)):
        targets.append(
            {
                "refId": _ref_id(len(targets)),
                "datasource": DATASOURCE,
                "editorMode": "code",
                "expr": expr,
                "legendFormat": legend or "__auto",
                "range": True,
            }
        )
    per_row = GRID_COLUMNS // PANEL_WIDTH
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {
            "h": PANEL_HEIGHT,
            "w": PANEL_WIDTH,
            "x": (index % per_row) * PANEL_WIDTH,
            "y": (index // per_row) * PANEL_HEIGHT,
        },
        "fieldConfig": {"defaults": {"unit": _unit(plan, panel)}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": targets,
    }


def _namespace_variable(plan: RolloutPlan) -> dict[str, Any]:
    namespaces = [plan.target.namespaces.production]
    if plan.target.namespaces.staging:
        namespaces.append(plan.target.namespaces.staging)
    default = namespaces[0]
    return {
        "name": "namespace",
        "label": "Namespace",
        "type": "custom",
        "query": ",".join(namespaces),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": ns == default, "text": ns, "value": ns} for ns in namespaces],
        "hide": 0,
        "multi": False,
        "includeAll": False,
    }


def render_dashboard(plan: RolloutPlan) -> dict[str, Any]:
    """Grafana dashboard JSON (as data) for ``plan``; an empty dashboard if it has none."""
    title = plan.dashboard.title if plan.dashboard else plan.name
    panels = plan.dashboard.panels if plan.dashboard else []
    return {
        "uid": f"phasegate-{plan.name}"[:40],
        "title": title,
        "description": plan.description,
        "tags": ["phasegate", plan.name],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                _namespace_variable(plan),
            ]
        },
        "panels": [_panel(plan, panel, i) for i, panel in enumerate(panels)],
    }


def to_json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"
