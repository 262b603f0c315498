"""Prometheus alerting rules rendered from a plan: the seed's "Alerting Configuration" plus
one standing alert per rollback trigger, so the conditions that would roll a release back
during a rollout keep paging after it.

Design decisions:

* One rules file, one group (``phasegate-<plan>``). Every expression is rendered for the
  production namespace and the stable Deployment name: staging has its own rollout gates, and
  a rules file is loaded by the production Prometheus.
* ``{{window}}`` becomes ``5m`` for the plan's own alerts (the seed writes ``[5m]``); a
  trigger's alert uses the trigger's window, or its phase's gate interval, as the rollout did.
* A trigger states the *healthy* condition (``plan.py``); its alert fires on the negation
  (``<=`` becomes ``>``, ``zero`` becomes ``> 0``), so the alert and the rollback trigger
  disagree on nothing.
* Trigger alerts by kind:
  - absolute / zero: one series per track (canary and stable), each tagged with its track by
    ``label_replace``: whichever track runs the new version is covered, during the canary
    phases and after promotion.
  - delta / ratio against ``stable``: canary compared with stable in PromQL
    (``(canary) - (stable) > 50``); both sides are aggregated to one label-less series, so
    the binary operation matches one to one.
  - delta / ratio against ``pre_deploy``: a standing rule knows no deploy time, so the
    baseline is the same query one soak of the trigger's phase earlier, via a subquery with
    ``offset`` (works for any expression, not only range selectors). During that phase's soak
    "one soak ago" is always before the deploy, which is exactly the window in which the
    trigger acts.
  - judge gates compare sample distributions and have no PromQL form: they get no alert.
* "Distinct" triggers are distinct rendered rules: the seed's ``token-not-active`` appears in
  four phases with one expression, so it becomes one alert whose ``rollback`` annotation
  lists what each phase does about it. A name reused with a different expression gets a
  suffix (``VsPreDeploy``, or a number).
* ``for`` is the tolerated failures times the phase's interval: ``failure_limit: 0`` fires on
  the first bad evaluation, as the trigger does.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ruamel.yaml import YAML

from phasegate import gates, templates
from phasegate.durations import format_duration
from phasegate.plan import Baseline, GateKind, Phase, RolloutPlan, Trigger

ALERT_WINDOW = "5m"
TRACKS = ("canary", "stable")
# The healthy condition's negation: what makes an alert fire.
_BREACH = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!="}


def _render(plan: RolloutPlan, trigger: Trigger, track: str, window: str) -> str:
    scope = gates.Scope(plan.target.namespaces.production, plan.target.deployment, track)
    return gates.query(plan, trigger, scope, track, window)


def _camel(slug: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", slug) if part)


def _gate_window(trigger: Trigger, phase: Phase) -> str:
    return format_duration(timedelta(seconds=gates.window_seconds(trigger, phase)))


def _threshold(value: float) -> str:
    return f"{value:g}"


def trigger_expr(plan: RolloutPlan, trigger: Trigger, phase: Phase) -> str:
    """The PromQL that is true (non-empty) exactly when ``trigger`` would fail."""
    window = _gate_window(trigger, phase)
    if trigger.kind is GateKind.JUDGE:
        raise ValueError(f"judge trigger {trigger.name!r} has no PromQL form")
    if trigger.kind in (GateKind.ABSOLUTE, GateKind.ZERO):
        breach = "> 0" if trigger.kind is GateKind.ZERO else f"{_BREACH[trigger.op]} {_threshold(trigger.threshold)}"
        parts = [
            f'label_replace(({_render(plan, trigger, track, window)}), "track", "{track}", "", "")'
            f" {breach}"
            for track in TRACKS
        ]
        return " or ".join(parts)
    op = "-" if trigger.kind is GateKind.DELTA else "/"
    breach = f"{_BREACH[trigger.op]} {_threshold(trigger.threshold)}"
    if trigger.baseline is Baseline.STABLE:
        subject = _render(plan, trigger, "canary", window)
        base = _render(plan, trigger, "stable", window)
        return f"({subject}) {op} ({base}) {breach}"
    subject = _render(plan, trigger, phase.subject_track, window)
    soak = format_duration(phase.soak)
    base = f"last_over_time(({subject})[{window}:1m] offset {soak})"
    return f"({subject}) {op} {base} {breach}"


@dataclass
class _TriggerAlert:
    name: str
    expr: str
    for_: timedelta
    track: str | None
    trigger: str
    bound: str
    description: str = ""
    rollbacks: list[str] = field(default_factory=list)


def _trigger_alerts(plan: RolloutPlan) -> list[_TriggerAlert]:
    by_expr: dict[tuple[str, timedelta], _TriggerAlert] = {}
    taken = {alert.name for alert in plan.alerts}
    for phase in plan.phases:
        for trigger in phase.triggers:
            if trigger.kind is GateKind.JUDGE:
                continue
            expr = trigger_expr(plan, trigger, phase)
            for_ = phase.interval * trigger.failure_limit
            alert = by_expr.get((expr, for_))
            if alert is None:
                name = "Rollback" + _camel(trigger.name)
                if name in taken and trigger.compares and trigger.baseline is Baseline.PRE_DEPLOY:
                    name += "VsPreDeploy"
                base, n = name, 2
                while name in taken:
                    name, n = f"{base}{n}", n + 1
                taken.add(name)
                track = "canary" if trigger.compares and trigger.baseline is Baseline.STABLE else None
                if trigger.compares and trigger.baseline is Baseline.PRE_DEPLOY:
                    track = phase.subject_track
                alert = _TriggerAlert(name, expr, for_, track, trigger.name, trigger.bound)
                by_expr[(expr, for_)] = alert
            # The first phase may leave the description out where a later one words it.
            alert.description = alert.description or trigger.description
            alert.rollbacks.append(f"{phase.name}: {trigger.rollback.value}")
    return list(by_expr.values())


def render_alerts(plan: RolloutPlan) -> dict[str, Any]:
    """A Prometheus rules file (as data) for ``plan``; ``to_yaml`` writes it."""
    rules: list[dict[str, Any]] = []
    for alert in plan.alerts:
        rule: dict[str, Any] = {
            "alert": alert.name,
            "expr": templates.render(alert.expr, gates.alert_variables(plan, ALERT_WINDOW)),
        }
        if alert.for_:
            rule["for"] = format_duration(alert.for_)
        rule["labels"] = {"severity": alert.severity, "plan": plan.name}
        annotations = {"message": alert.message}
        if alert.description:
            annotations["description"] = alert.description
        rule["annotations"] = annotations
        rules.append(rule)
    for trigger_alert in _trigger_alerts(plan):
        rule = {"alert": trigger_alert.name, "expr": trigger_alert.expr}
        if trigger_alert.for_:
            rule["for"] = format_duration(trigger_alert.for_)
        # ``trigger`` lets the rollback-candidate flow re-measure the very gate after acting.
        labels = {"severity": "critical", "plan": plan.name, "trigger": trigger_alert.trigger}
        if trigger_alert.track is not None:
            labels["track"] = trigger_alert.track
        rule["labels"] = labels
        rule["annotations"] = {
            "message": f"Rollback trigger {trigger_alert.trigger} breached (healthy: {trigger_alert.bound})",
            "rollback": "; ".join(trigger_alert.rollbacks),
        }
        if trigger_alert.description:
            rule["annotations"]["description"] = trigger_alert.description
        rules.append(rule)
    return {"groups": [{"name": f"phasegate-{plan.name}", "rules": rules}]}


def to_yaml(data: dict[str, Any]) -> str:
    """Block-style YAML with long PromQL kept on one line (promtool and people both read it)."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 100_000
    # Keep rule keys in the order people expect (alert, expr, for, labels, annotations).
    yaml.representer.sort_base_mapping_type_on_output = False
    buffer = io.StringIO()
    buffer.write("# Generated by `phasegate render alerts` from the plan; do not edit by hand.\n")
    yaml.dump(data, buffer)
    return buffer.getvalue()
