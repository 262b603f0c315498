"""The rollout plan: pydantic models, YAML loading, and errors a person can act on.

Validation happens in two passes so that every problem is reported at once:
1. structure — pydantic, ``extra="forbid"``: unknown keys, wrong types, bad durations;
2. meaning — cross-field rules (a gate names a metric that exists, shares never decrease,
   ``canary_only`` is impossible where no canary runs, ...), each tied to the path it is
   about rather than to the whole model, which is what a model validator would give.
Both passes yield ``(path, message)``; ``load_plan`` maps paths to YAML lines and raises one
``PlanError`` with a ``FILE:LINE: dotted.path: message`` line per problem.

Gate semantics (one rule for all kinds): a gate states the *healthy* condition. A
measurement that meets it is Successful, one that breaks it is Failed, a missing value is
Inconclusive, a provider error is Error. Triggers are gates whose failure rolls back at
once; success criteria are gates judged over the whole soak.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from phasegate import capacity, templates
from phasegate.durations import parse_duration
from phasegate.errors import PlanError
from phasegate.yamlsource import Source, SourceError, load_file, load_text


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$", max_length=63)]
# A share of a soak's rounds: "2%", "0.5%", up to "100%".
Share = Annotated[str, Field(pattern=r"^(100|[0-9]{1,2})(\.[0-9]+)?%$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Environment(enum.StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"


class Strategy(enum.StrEnum):
    """Rollback procedures from least to most drastic; when several triggers fire in one
    round the most drastic wins, since it subsumes the others."""

    FEATURE_FLAG = "feature_flag"
    CANARY_ONLY = "canary_only"
    FULL_UNDO = "full_undo"

    @property
    def rank(self) -> int:
        return list(Strategy).index(self)


class GateKind(enum.StrEnum):
    ABSOLUTE = "absolute"  # value <op> threshold
    ZERO = "zero"  # value == 0 over the window
    DELTA = "delta"  # value − baseline <op> threshold
    RATIO = "ratio"  # value / baseline <op> threshold
    JUDGE = "judge"  # Mann-Whitney canary vs baseline samples (judge.py)


class Baseline(enum.StrEnum):
    STABLE = "stable"  # the stable track, measured in the same round
    PRE_DEPLOY = "pre_deploy"  # the same track, measured over the window before this phase's deploy


Op = Literal["<", "<=", ">", ">=", "=="]


class Namespaces(_Model):
    staging: K8sName | None = Field(None, description="Namespace of the staging Deployment; omit if no staging phase.")
    production: K8sName = Field(description="Namespace of the production Deployment.")


class Target(_Model):
    deployment: K8sName = Field(description="The stable Deployment; the canary is '<deployment>-canary'.")
    container: K8sName = Field(description="The container whose image the rollout changes.")
    namespaces: Namespaces
    service: K8sName | None = Field(None, description="Service selecting both tracks (documentation and preflight).")
    replicas: int | None = Field(
        None, ge=1, description="Total replicas across both tracks; default: the stable Deployment's replicas."
    )
    progress_deadline: Duration = Field(
        timedelta(minutes=10), description="How long a deploy may take to become ready before it counts as failed."
    )
    share_tolerance: float = Field(
        10.0, ge=0, le=100,
        description="Percentage points a phase's real share (whole pods) may differ from canary_share; "
        "checked at the live replica count before anything changes.",
    )


class ConfigMapFlag(_Model):
    name: K8sName
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")


class FeatureFlag(_Model):
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Env var (pods restart).")
    configmap: ConfigMapFlag | None = Field(None, description="ConfigMap key read at runtime (no restart).")
    on_value: str = "true"
    off_value: str = "false"
    prefer: Literal["configmap", "env"] = Field(
        "configmap", description="Which switch a feature-flag rollback flips first (ConfigMap: no restart)."
    )


class MetricTemplate(_Model):
    query: str = Field(
        min_length=1,
        description="PromQL with {{pods}}, {{namespace}}, {{window}}, {{workload}}, {{pod_template_hash}}, "
        "{{selector}}, {{track}}, {{deployment}} (see templates.py).",
    )
    unit: str = ""
    description: str = ""

    @field_validator("query")
    @classmethod
    def _renders(cls, query: str) -> str:
        templates.render(query, _SAMPLE_VALUES)
        return query


_SAMPLE_VALUES = {
    "track": "stable", "namespace": "ns", "deployment": "app", "window": "5m", "pods": "app-[a-z]+-[a-z]{5}",
    "workload": "app", "pod_template_hash": "abc", "selector": 'pod=~"app-.+"',
}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class TrackLabels(_Model):
    """A plan's own label convention: the label matchers that select each track's series
    (``{{selector}}``), e.g. ``{track: canary}`` where a PodMonitor copies the pod label."""

    stable: dict[str, str] = Field(description="Label name → value on every series of the stable track.")
    canary: dict[str, str] = Field(description="Label name → value on every series of the canary track.")


class JudgeConfig(_Model):
    """Kayenta-style settings for ``kind: judge`` (see judge.py)."""

    direction: Literal["increase", "decrease", "either"] = "increase"
    confidence: float = Field(0.98, gt=0.5, lt=1)
    tolerance: float = Field(0.05, ge=0, description="Relative effect tolerated before a difference counts.")
    step: Duration = Field(timedelta(minutes=1), description="Resolution of the sample series compared.")
    critical: bool = Field(
        False, description="A failed judgement rolls back at once (the phase's rollback) instead of holding."
    )


class Gate(_Model):
    name: Slug
    metric: str = Field(description="Key in the plan's metrics catalogue.")
    kind: GateKind = GateKind.ABSOLUTE
    op: Op = "<"
    threshold: float = 0.0
    baseline: Baseline = Field(Baseline.STABLE, description="What delta/ratio/judge gates compare against.")
    window: Duration | None = Field(None, description="Range of {{window}}; default: the phase's gate interval.")
    failure_limit: int = Field(0, ge=0, description="Failed measurements tolerated (Argo default 0).")
    inconclusive_limit: int | Share = Field(
        "1%",
        description="Rounds without data tolerated before holding: a count, or a share of the soak's rounds "
        "such as '2%' (577 rounds of a 48h soak at 5m: 11 rounds). Past it the gate cannot pass: held at once. "
        "Default 1% (5 rounds of 577): Argo's 0 suits analyses of minutes, not a soak of days.",
    )
    consecutive_error_limit: int = Field(4, ge=0, description="Provider errors in a row tolerated (Argo default 4).")
    judge: JudgeConfig | None = None
    description: str = ""

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("threshold must be a finite number")
        return v

    @field_validator("inconclusive_limit")
    @classmethod
    def _count(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("a count of rounds cannot be negative")
        return v

    def inconclusive_allowed(self, rounds: int) -> int:
        """Rounds without data tolerated in a soak of ``rounds`` rounds."""
        limit = self.inconclusive_limit
        if isinstance(limit, int):
            return limit
        return math.floor(float(limit.rstrip("%")) / 100 * rounds)

    @property
    def bound(self) -> str:
        """The healthy condition as people read it: ``canary − stable < 50``."""
        subject = "value"
        if self.kind is GateKind.ZERO:
            return "value == 0"
        if self.kind is GateKind.JUDGE:
            return f"judge vs {self.baseline.value} ({(self.judge or JudgeConfig()).direction})"
        base = "stable" if self.baseline is Baseline.STABLE else "pre-deploy"
        if self.kind is GateKind.DELTA:
            subject = f"value − {base}"
        elif self.kind is GateKind.RATIO:
            subject = f"value / {base}"
        return f"{subject} {self.op} {self.threshold:g}"

    @property
    def compares(self) -> bool:
        return self.kind in (GateKind.DELTA, GateKind.RATIO, GateKind.JUDGE)


class Trigger(Gate):
    rollback: Strategy = Field(description="The rollback procedure this trigger starts when it fails.")


class Check(_Model):
    """A smoke or load test run after deploy, before the soak."""

    name: Slug
    kind: Literal["smoke", "load"] = "smoke"
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "POST", "HEAD"] = "GET"
    requests: int = Field(1, ge=1)
    concurrency: int = Field(1, ge=1)
    expect_status: int = Field(200, ge=100, le=599)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    timeout: Duration = timedelta(seconds=10)


class Approval(_Model):
    required: bool = Field(True, description="Pause for a person before the next phase; in the last phase, "
                           "before promotion if it has manual_criteria to attest.")
    approvers: list[str] = Field(default_factory=list, description="Who may approve; empty: anyone.")
    timeout: Duration = Field(timedelta(hours=24), description="How long the pause waits.")
    on_timeout: Literal["halt", "rollback"] = "halt"
    on_reject: Strategy | None = Field(None, description="Rollback on reject; default: the phase's rollback.")


class Phase(_Model):
    name: Slug
    environment: Environment
    canary_share: float = Field(gt=0, le=100, description="Percent of production replicas on the new version.")
    soak: Duration = Field(description="How long gates are watched before the success criteria are judged.")
    interval: Duration = Field(timedelta(minutes=5), description="Time between gate rounds.")
    initial_delay: Duration = Field(
        timedelta(0), description="Wait after the deploy before the first gate round (Argo's initialDelay)."
    )
    checks: list[Check] = Field(default_factory=list)
    success: list[Gate] = Field(default_factory=list, description="Judged over the whole soak.")
    triggers: list[Trigger] = Field(default_factory=list, description="Roll back at once on failure.")
    manual_criteria: list[str] = Field(default_factory=list, description="Attested by the approver.")
    approval: Approval = Field(default_factory=Approval)
    rollback: Strategy | None = Field(
        None,
        description="For reject, errors and failed deploys; default: canary_only if a canary runs, else full_undo.",
    )
    verify_window: Duration = Field(
        timedelta(minutes=10),
        description="How long a rollback waits for the fired metrics to return within bounds (reported either way).",
    )
    on_error: Literal["rollback", "halt"] | None = Field(
        None,
        description="When a gate's consecutive errors pass its limit: roll back (Argo aborts) or halt for a person; "
        "default: halt when the new version serves all of production (a Prometheus outage must not undo a "
        "release that was healthy), else rollback.",
    )
    trigger_interval: Duration | None = Field(
        None,
        description="Time between trigger rounds, so a trigger fires well within a 5-minute budget even when "
        "success criteria are judged every `interval`; default: the smaller of `interval` and 1m "
        "(two scrapes at kube-prometheus' 30s).",
    )
    on_drift: Literal["halt", "rollback"] = Field(
        "halt", description="When the cluster no longer shows what the rollout left (another writer changed "
        "an image, the split, the canary or a flag): halt for a person, or roll back with the phase's rollback.",
    )
    description: str = ""

    @property
    def has_canary(self) -> bool:
        return self.environment is Environment.PRODUCTION and self.canary_share < 100

    @property
    def default_rollback(self) -> Strategy:
        if self.rollback is not None:
            return self.rollback
        return Strategy.CANARY_ONLY if self.has_canary else Strategy.FULL_UNDO

    @property
    def error_action(self) -> Literal["rollback", "halt"]:
        if self.on_error is not None:
            return self.on_error
        all_of_production = self.environment is Environment.PRODUCTION and not self.has_canary
        return "halt" if all_of_production else "rollback"

    @property
    def trigger_every(self) -> timedelta:
        if self.trigger_interval is not None:
            return min(self.trigger_interval, self.interval)
        return min(self.interval, timedelta(minutes=1))

    @property
    def subject_track(self) -> str:
        """The track running the new version during this phase."""
        return "canary" if self.has_canary else "stable"

    def gates(self) -> Iterator[Gate]:
        yield from self.triggers
        yield from self.success

    @property
    def rounds(self) -> int:
        """Gate rounds in a full soak: one at the start of each interval and one at its end."""
        return int(self.soak.total_seconds() // max(self.interval.total_seconds(), 1e-9)) + 1


class SlackSettings(_Model):
    channel: str = Field(pattern=r"^[#@]?[-_a-z0-9.]+$")
    mention_on_critical: str | None = Field(None, description="Handle mentioned on critical events, e.g. @oncall.")
    token_secret_block: str | None = Field(None, description="Prefect Secret block holding the bot token.")
    approvers: dict[str, str] = Field(
        default_factory=dict,
        description="Slack user ID → approver name, for approving with the message's buttons "
        "(`phasegate slack-receiver`); a name must also be on the phase's approver list.",
    )


class Notifications(_Model):
    slack: SlackSettings | None = None


class Cadence(_Model):
    name: Slug
    every: Duration
    start: Duration = Field(timedelta(0), description="After promotion.")
    end: Duration = Field(description="After promotion.")
    report: Literal["review", "summary"] = "review"


class Reviews(_Model):
    gates: list[Gate] = Field(description="Evaluated on the whole Deployment over each review's window.")
    cadence: list[Cadence]
    manual_checks: list[str] = Field(default_factory=list)


class SignOff(_Model):
    after: Duration = timedelta(weeks=4)
    criteria: list[Gate] = Field(default_factory=list, description="Must have held over the whole period.")
    manual_criteria: list[str] = Field(default_factory=list)
    incident: str | None = None
    confirm: bool = Field(True, description="Pause for a person to confirm and record lessons learned.")


class ChecklistItem(_Model):
    item: str
    auto: Literal["rollback_rehearsed", "load_tested", "monitoring_rendered"] | None = None


class Checklist(_Model):
    required: bool = True
    items: list[ChecklistItem] = Field(default_factory=list)


class Alert(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    expr: str = Field(description="PromQL; may use {{namespace}}, {{deployment}}, {{window}}.")
    for_: Duration = Field(timedelta(0), alias="for")
    severity: Literal["info", "warning", "critical"]
    message: str
    description: str = ""


class PanelQuery(_Model):
    metric: str | None = None
    expr: str | None = None
    legend: str = ""


class Panel(_Model):
    title: str
    description: str = ""
    unit: str = ""
    queries: list[PanelQuery] = Field(min_length=1)


class Dashboard(_Model):
    title: str
    panels: list[Panel] = Field(default_factory=list)


class RollbackBudgets(_Model):
    """How long each rollback procedure may take, start to verified; the seed's "Rollback Procedures"."""

    full_undo: Duration = Field(timedelta(minutes=5), description='Seed "Immediate Rollback (< 5 minutes)".')
    canary_only: Duration = Field(timedelta(minutes=15), description='Seed "Partial Rollback (< 15 minutes)".')
    feature_flag: Duration = Field(timedelta(minutes=1), description='Seed "Feature Flag Rollback (< 1 minute)".')

    def of(self, strategy: Strategy) -> timedelta:
        return {Strategy.FULL_UNDO: self.full_undo, Strategy.CANARY_ONLY: self.canary_only,
                Strategy.FEATURE_FLAG: self.feature_flag}[strategy]


class AlertResponse(_Model):
    """What a firing alert routed to phasegate does (the seed's "ROLLBACK CANDIDATE")."""

    rollback_at_once: list[Literal["info", "warning", "critical"]] = Field(
        default_factory=lambda: list[Literal["info", "warning", "critical"]](["critical"]),
        description="Severities that roll back without a person while a canary runs or within `first_day` of "
        "promotion; any other alert pauses for a person with the evidence and the procedures as choices.",
    )
    first_day: Duration = Field(
        timedelta(hours=24), description='After promotion, how long an alert still rolls back at once (seed "Day 1").'
    )
    decide_timeout: Duration = Field(timedelta(hours=4), description="How long the pause waits for a person.")


class RolloutPlan(_Model):
    api_version: Literal["phasegate/v1"] = Field(alias="apiVersion")
    name: Slug
    description: str = ""
    source: str = Field("", description="The document this plan encodes.")
    target: Target
    feature_flag: FeatureFlag | None = None
    metrics: dict[str, MetricTemplate]
    labels: TrackLabels | None = Field(
        None, description="How series tell canary from stable, if not by pod name ({{selector}})."
    )
    phases: list[Phase] = Field(min_length=1)
    notifications: Notifications = Field(default_factory=Notifications)
    reviews: Reviews | None = None
    signoff: SignOff | None = None
    checklist: Checklist | None = None
    alerts: list[Alert] = Field(default_factory=list)
    dashboard: Dashboard | None = None
    rollback_budgets: RollbackBudgets = Field(default_factory=RollbackBudgets)
    alert_response: AlertResponse = Field(default_factory=AlertResponse)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def shares(self, total_replicas: int) -> list[capacity.PhaseShare]:
        """Each production canary phase's real split at ``total_replicas``."""
        return capacity.phase_shares(
            ((i, p.name, p.canary_share) for i, p in enumerate(self.phases) if p.has_canary), total_replicas)

    def namespace(self, phase: Phase) -> str:
        if phase.environment is Environment.STAGING:
            assert self.target.namespaces.staging is not None
            return self.target.namespaces.staging
        return self.target.namespaces.production


# --- meaning ---------------------------------------------------------------------------

Problem = tuple[tuple[str | int, ...], str]


def _check_gate(plan: RolloutPlan, gate: Gate, path: tuple[str | int, ...], phase: Phase | None) -> Iterator[Problem]:
    if gate.metric not in plan.metrics:
        known = ", ".join(sorted(plan.metrics)) or "none"
        yield (*path, "metric"), f"unknown metric {gate.metric!r}; the catalogue has: {known}"
    if gate.kind is GateKind.ZERO and (gate.op != "<" or gate.threshold != 0):
        yield (*path, "kind"), "a 'zero' gate takes no op or threshold (it means value == 0)"
    if gate.kind is GateKind.JUDGE and gate.judge is None:
        yield (*path, "judge"), "a 'judge' gate needs a judge: block (direction, confidence, tolerance)"
    if gate.kind is not GateKind.JUDGE and gate.judge is not None:
        yield (*path, "judge"), f"judge settings only apply to kind 'judge', not {gate.kind.value!r}"
    if phase is not None:
        if gate.compares and gate.baseline is Baseline.STABLE and not phase.has_canary:
            yield (*path, "baseline"), (
                f"phase {phase.name!r} runs no canary beside stable, so there is no stable track to compare "
                "with; use baseline: pre_deploy"
            )
        if gate.window is not None and gate.window < phase.interval and gate.kind is not GateKind.JUDGE:
            yield (*path, "window"), "window is shorter than the phase interval: some time would go unwatched"


def semantic_problems(plan: RolloutPlan, replicas: int | None = None) -> list[Problem]:
    """Every problem of meaning; ``replicas`` (else ``target.replicas``) also checks each
    phase's real share against ``target.share_tolerance``."""
    problems: list[Problem] = []
    total = replicas or plan.target.replicas
    if total is not None:
        problems.extend((("phases", i, "canary_share"), f"at {total} replica(s) {message}")
                        for i, message in capacity.share_problems(plan.shares(total), plan.target.share_tolerance))
    seen: set[str] = set()
    last_share = 0.0
    seen_production = False
    for i, phase in enumerate(plan.phases):
        path: tuple[str | int, ...] = ("phases", i)
        if phase.name in seen:
            problems.append(((*path, "name"), f"phase name {phase.name!r} is used twice"))
        seen.add(phase.name)
        if phase.environment is Environment.STAGING:
            if seen_production:
                problems.append(((*path, "environment"), "staging phases must come before production phases"))
            if plan.target.namespaces.staging is None:
                problems.append(((*path, "environment"), "a staging phase needs target.namespaces.staging"))
            if phase.canary_share != 100:
                message = "staging runs only the new version: canary_share must be 100"
                problems.append(((*path, "canary_share"), message))
        else:
            seen_production = True
            if phase.canary_share < last_share:
                message = f"{phase.canary_share:g}% is less than the previous phase's {last_share:g}%"
                problems.append(((*path, "canary_share"), message))
            if last_share == 100:
                problems.append(((*path, "canary_share"), "a phase after 100% has nothing left to roll out"))
            last_share = phase.canary_share
        if phase.soak < phase.interval:
            problems.append(((*path, "soak"), "soak is shorter than the gate interval: no gate round would run"))
        if phase.interval <= timedelta(0):
            problems.append(((*path, "interval"), "interval must be positive"))
        strategies: list[tuple[tuple[str | int, ...], Strategy]] = [
            (("triggers", j, "rollback"), t.rollback) for j, t in enumerate(phase.triggers)
        ]
        strategies.append((("rollback",), phase.default_rollback))
        if phase.approval.on_reject is not None:
            strategies.append((("approval", "on_reject"), phase.approval.on_reject))
        for sub, strategy in strategies:
            if strategy is Strategy.CANARY_ONLY and not phase.has_canary:
                problems.append(((*path, *sub), f"canary_only is impossible in phase {phase.name!r}: no canary runs"))
            if strategy is Strategy.FEATURE_FLAG and plan.feature_flag is None:
                problems.append(((*path, *sub), "feature_flag rollback needs a top-level feature_flag block"))
        names: set[str] = set()
        for key, gates in (("triggers", phase.triggers), ("success", phase.success)):
            for j, gate in enumerate(gates):
                if gate.name in names:
                    problems.append(((*path, key, j, "name"), f"gate name {gate.name!r} is used twice in this phase"))
                names.add(gate.name)
                problems.extend(_check_gate(plan, gate, (*path, key, j), phase))
    if plan.feature_flag is not None and plan.feature_flag.env is None and plan.feature_flag.configmap is None:
        problems.append((("feature_flag",), "name an env var, a configmap key, or both"))
    if plan.reviews is not None:
        for j, gate in enumerate(plan.reviews.gates):
            problems.extend(_check_gate(plan, gate, ("reviews", "gates", j), None))
            if gate.compares and gate.baseline is Baseline.STABLE:
                problems.append(((("reviews", "gates", j, "baseline")), "reviews run after promotion: use pre_deploy"))
        for j, cadence in enumerate(plan.reviews.cadence):
            if cadence.end <= cadence.start:
                problems.append((("reviews", "cadence", j, "end"), "end must be after start"))
    if plan.signoff is not None:
        for j, gate in enumerate(plan.signoff.criteria):
            problems.extend(_check_gate(plan, gate, ("signoff", "criteria", j), None))
    for j, alert in enumerate(plan.alerts):
        try:
            rendered_vars = templates.placeholders(alert.expr)
            if "track" in rendered_vars:
                problems.append((("alerts", j, "expr"), "alerts cover every track: {{track}} is not allowed here"))
            else:
                templates.render(alert.expr, _SAMPLE_VALUES)
        except ValueError as exc:
            problems.append((("alerts", j, "expr"), str(exc)))
    if plan.dashboard is not None:
        for j, panel in enumerate(plan.dashboard.panels):
            for k, q in enumerate(panel.queries):
                qpath = ("dashboard", "panels", j, "queries", k)
                if (q.metric is None) == (q.expr is None):
                    problems.append((qpath, "give exactly one of metric or expr"))
                elif q.metric is not None and q.metric not in plan.metrics:
                    problems.append(((*qpath, "metric"), f"unknown metric {q.metric!r}"))
    for name in plan.metrics:
        if not re.match(r"^[a-z][a-z0-9_]*$", name):
            problems.append((("metrics", name), "metric names are lower_snake_case"))
    problems.extend(_label_problems(plan))
    return problems


def _label_problems(plan: RolloutPlan) -> Iterator[Problem]:
    """The plan's label convention must name valid labels and tell the tracks apart; pod
    names must keep their structure for ``{{pods}}`` to select them."""
    used = {v for m in plan.metrics.values() for v in templates.placeholders(m.query)}
    if "pods" in used or ("selector" in used and plan.labels is None):
        # The apiserver cuts a pod's generateName base to 58 characters, which would cut
        # into the pod-template-hash of a long canary name.
        longest = len(plan.target.deployment) + len("-canary") + 1 + 10 + 1
        if longest > 58:
            yield ("target", "deployment"), (
                f"{plan.target.deployment!r} is too long for {{{{pods}}}}: canary pod names would be truncated "
                f"({longest} > 58 characters before the random suffix); select by a label (labels:) instead"
            )
    if plan.labels is None:
        return
    for track in ("stable", "canary"):
        matchers: dict[str, str] = getattr(plan.labels, track)
        if not matchers:
            yield ("labels", track), "name at least one label: an empty selector matches every series"
        for name, value in matchers.items():
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                yield ("labels", track, name), "not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no __ prefix)"
            elif not value:
                yield ("labels", track, name), "an empty value matches series without the label: give a value"
    stable, canary = plan.labels.stable, plan.labels.canary
    if stable and canary and not any(k in canary and canary[k] != v for k, v in stable.items()):
        yield ("labels",), (
            "the stable and canary matchers do not disagree on any label, so a series could match both: "
            "name one label with a different value per track (e.g. track: stable / track: canary)"
        )


# --- loading ---------------------------------------------------------------------------


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(plan)"


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union"))))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the plan format)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append((tuple(_alias(p) for p in loc), msg))
    return out


def _alias(p: str | int) -> str | int:
    return {"for_": "for", "api_version": "apiVersion"}.get(p, p) if isinstance(p, str) else p


def plan_from_source(source: Source, replicas: int | None = None) -> RolloutPlan:
    def fail(problems: list[Problem]) -> PlanError:
        lines = [f"{source.name}:{source.line_of(path)}: {_dotted(path)}: {msg}" for path, msg in problems]
        return PlanError(lines)

    if source.data is None:
        raise fail([((), "the file is empty; expected a plan (apiVersion: phasegate/v1, ...)")])
    if not isinstance(source.data, dict):
        raise fail([((), f"expected a mapping at the top of the plan, found {type(source.data).__name__}")])
    try:
        plan = RolloutPlan.model_validate(source.data)
    except ValidationError as exc:
        raise fail(_pydantic_problems(exc)) from None
    problems = semantic_problems(plan, replicas)
    if problems:
        raise fail(problems)
    return plan


def load_plan(path: str | Path, replicas: int | None = None) -> RolloutPlan:
    """Load and validate a plan file; raise ``PlanError`` listing every problem. With
    ``replicas``, each phase's share is also checked at that replica count."""
    try:
        source = load_file(path)
    except SourceError as exc:
        raise PlanError([str(exc)]) from None
    return plan_from_source(source, replicas)


def plan_warnings(plan: RolloutPlan) -> list[Problem]:
    """What is valid but likely not meant: a manual criterion no approval pause ever asks.

    A phase pauses for a person when its approval is required (before the next phase, or
    before promotion when it is the last one and has criteria) or when it is held; with
    ``approval.required: false`` its criteria are asked only on a hold, which a healthy
    rollout never has. Not a problem: such a plan runs, it just attests less than it says."""
    return [
        (("phases", i, "manual_criteria"),
         f"warning: {len(phase.manual_criteria)} criterion(s) here can never be asked unless the phase is held: "
         "approval.required is false (set it to true, or move them to a phase whose approval is required)")
        for i, phase in enumerate(plan.phases)
        if phase.manual_criteria and not phase.approval.required
    ]


def warning_lines(path: str | Path) -> list[str]:
    """``plan_warnings`` of a valid plan file, as FILE:LINE: path: warning: message."""
    source = load_file(path)
    return [f"{source.name}:{source.line_of(where)}: {_dotted(where)}: {msg}"
            for where, msg in plan_warnings(plan_from_source(source))]


def load_plan_text(text: str, name: str = "<plan>") -> RolloutPlan:
    try:
        source = load_text(text, name)
    except SourceError as exc:
        raise PlanError([str(exc)]) from None
    return plan_from_source(source)
