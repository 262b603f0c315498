"""The workload a plan's own queries need: which series, of which type, with which labels.

A rehearsal of a plan for another service must export what *that* plan's gates read, not
the seed's token-refresh metrics. So the series are derived from the plan's PromQL itself.

Design decisions:

* **A real PromQL parser** (``promql_parser``, the Rust ``promql-parser`` crate behind a
  Python binding), never a regex: a metric template is rendered first (its ``{{...}}``
  placeholders filled with the values a rehearsal uses: the canary's pod regex, a window)
  and every vector selector in the syntax tree is collected with the function it sits
  under.
* **A series' type follows Prometheus naming and use**: a ``_bucket`` (under
  ``histogram_quantile``) is a histogram's, and so is a ``_count`` or ``_sum`` under
  ``rate``/``increase`` or beside such buckets — all exported as one histogram family, whose
  ``_count`` is the counter a rate reads; a ``_total`` is a counter's; anything else a gauge.
* **Target labels are not the app's** (``namespace``, ``pod``, ``container``, ``service``,
  ``endpoint``, ``job``, ``instance`` and the plan's own ``labels:`` convention): they come
  from discovery, as on a cluster. Every other matcher becomes a label the app exports, with
  values that satisfy each matcher the plan uses — and, for a regex or a negative matcher, or
  a label some queries do not constrain, also a value that does not: ``status=~"5.."`` gets a
  ``500`` and a ``200`` child, so an error ratio has both a numerator and a denominator.
  Values that read as errors (``5xx``/``4xx``, ``*error*``, ``*fail*``, ``*timeout*``, ...)
  take the error share; the others split the rest.
* **Levels** (per-pod request rate, latency distribution, error share, gauge levels) come from
  an optional workload file, with defaults that make a healthy canary and stable statistically
  alike: the same distributions on every pod of both tracks.
* **Faults in the plan's language** are translated here, once, into effects on families
  (``gate_effects``): "push the canary's ``p95-ratio`` 2× past its bound" becomes a latency
  scale on the histogram that gate reads, "push ``error-rate-delta`` 2×" an error share. A
  gate whose query no effect of this workload can move is refused, naming it.

Pure: no I/O, no Prometheus client; ``app.py`` turns a ``Workload`` into registries.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from statistics import NormalDist
from typing import Any

import promql_parser as pp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from phasegate import gates, templates
from phasegate.plan import Gate, GateKind, RolloutPlan
from phasegate.ports import CANARY
from phasegate.yamlsource import Source, SourceError, load_file

TARGET_LABELS = frozenset({"namespace", "pod", "container", "service", "endpoint", "job", "instance"})
_BAD_VALUE = re.compile(r"^[45]\d\d$|error|fail|exception|timeout|timed_out|denied|reject|fatal", re.IGNORECASE)
_BAD_NAME = re.compile(r"error|fail|exception|timeout|reject|denied|dropped|panic", re.IGNORECASE)
# A value a label takes when a query does not pick it: what most services answer most of the time.
_GOOD_CANDIDATES = ("200", "ok", "success", "SUCCESS", "true", "other", "x", "default-value")
_STATUS_LABELS = frozenset({"status", "code", "status_code", "http_status", "response_code"})
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
MAX_CHILDREN = 64


class Kind(enum.StrEnum):
    HISTOGRAM = "histogram"
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # "=", "!=", "=~", "!~"
    value: str

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = _fullmatch(self.value, value)
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    """One vector selector of a metric's query, without its target labels."""

    metric: str  # the plan's catalogue key
    series: str  # the name as queried (``x_bucket``)
    matchers: tuple[Matcher, ...]
    under: tuple[str, ...]  # enclosing functions, innermost first

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.label, "")) for m in self.matchers)


@dataclass(frozen=True)
class Child:
    """One labelled series of a family, and its share of the family's events."""

    labels: tuple[tuple[str, str], ...]
    weight: float
    bad: bool


@dataclass(frozen=True)
class Family:
    """A metric family the app exports on every pod."""

    name: str  # prometheus_client's name: the histogram's base, the counter's without ``_total``
    kind: Kind
    label_names: tuple[str, ...]
    values: tuple[tuple[str, tuple[tuple[str, bool], ...]], ...]  # label → (value, bad) choices
    metrics: tuple[str, ...]  # catalogue keys whose queries read it

    @property
    def has_bad(self) -> bool:
        return any(bad for _, choices in self.values for _, bad in choices)

    @property
    def unit_scale(self) -> float:
        """Histogram values are in the family's unit; the default distribution is in ms."""
        if self.name.endswith("_seconds"):
            return 0.001
        return 1.0

    def children(self, error_share: float) -> list[Child]:
        """Every label combination, weighted so the bad ones share ``error_share``."""
        if not self.values:
            return [Child((), 1.0, False)]
        combos = list(product(*(choices for _, choices in self.values)))[:MAX_CHILDREN]
        bad = [any(b for _, b in combo) for combo in combos]
        n_bad, n_good = sum(bad), len(bad) - sum(bad)
        out = []
        for combo, is_bad in zip(combos, bad, strict=True):
            if n_bad and n_good:
                weight = error_share / n_bad if is_bad else (1 - error_share) / n_good
            else:
                weight = 1 / len(combos)
            out.append(Child(tuple(zip(self.label_names, (v for v, _ in combo), strict=True)), weight, is_bad))
        return out


@dataclass(frozen=True)
class Latency:
    median: float
    sigma: float

    def quantile(self, q: float) -> float:
        return self.median * math.exp(self.sigma * NormalDist().inv_cdf(min(max(q, 1e-6), 1 - 1e-6)))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyLevels(_Model):
    median: float | None = Field(None, gt=0, description="Median in the histogram's unit; default 40 ms (0.04 s)")
    sigma: float = Field(0.3, gt=0, le=3, description="Log-normal shape: p99 ≈ median × e^(2.33 σ)")


class Levels(_Model):
    """How one family (or, as defaults, every family) behaves on a healthy pod."""

    requests_per_s: float | None = Field(None, gt=0, description="Events per pod per wall second; default 200")
    error_share: float | None = Field(None, ge=0, le=1, description="Share of events on error children; 0.001")
    latency: LatencyLevels | None = None
    level: float | None = Field(None, description="A gauge's value; default 1")


class WorkloadFile(_Model):
    """The optional ``--workload`` file: defaults, and levels per family."""

    defaults: Levels = Field(default_factory=Levels)
    metrics: dict[str, Levels] = Field(default_factory=dict, description="Family name (or series name) → levels")


DEFAULT_REQUESTS_PER_S = 200.0
DEFAULT_ERROR_SHARE = 0.001
DEFAULT_MEDIAN_MS = 40.0


@dataclass(frozen=True)
class FamilyLevels:
    requests_per_s: float
    error_share: float
    latency: Latency
    level: float


@dataclass(frozen=True)
class Workload:
    """Every family a plan reads, and how each behaves when healthy."""

    families: tuple[Family, ...]
    selectors: tuple[Selector, ...]
    file: WorkloadFile = field(default_factory=WorkloadFile)
    # Families a ``zero`` gate reads: healthy means no error at all there, not a small share.
    quiet: frozenset[str] = frozenset()

    def family(self, name: str) -> Family | None:
        base = family_name(name)
        return next((f for f in self.families if f.name in (name, base)), None)

    def levels(self, family: Family) -> FamilyLevels:
        own = self.file.metrics.get(family.name) or next(
            (lv for key, lv in self.file.metrics.items() if family_name(key) == family.name), Levels())
        d = self.file.defaults
        lat_own, lat_def = own.latency or LatencyLevels(), d.latency or LatencyLevels()
        median = lat_own.median or lat_def.median or DEFAULT_MEDIAN_MS * family.unit_scale
        sigma = lat_own.sigma if own.latency is not None else lat_def.sigma
        rate = own.requests_per_s or d.requests_per_s or DEFAULT_REQUESTS_PER_S
        share = own.error_share if own.error_share is not None else d.error_share
        if share is None:
            share = 0.0 if family.name in self.quiet else DEFAULT_ERROR_SHARE
        level = own.level if own.level is not None else (d.level if d.level is not None else 1.0)
        return FamilyLevels(rate, share, Latency(median, sigma), level)

    def event_rate(self, family: Family, error_share: float | None = None) -> float:
        """Events per pod per second: an error counter (by its name) counts the error share of requests."""
        lv = self.levels(family)
        if family.kind is Kind.COUNTER and not family.has_bad and _BAD_NAME.search(family.name):
            return lv.requests_per_s * (lv.error_share if error_share is None else error_share)
        return lv.requests_per_s

    def selectors_of(self, metric: str) -> list[Selector]:
        return [s for s in self.selectors if s.metric == metric]


class WorkloadError(ValueError):
    """A plan's query cannot be turned into series, or a workload file is invalid."""


def family_name(series: str) -> str:
    for suffix in (*_HISTOGRAM_SUFFIXES, "_total"):
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


_COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})


def _kind(series: str, under: tuple[str, ...], buckets: set[str]) -> Kind:
    """``buckets``: families some query reads a ``_bucket`` of."""
    if series.endswith("_bucket"):
        return Kind.HISTOGRAM
    if series.endswith(("_count", "_sum")):
        # A histogram's count (rate of it, or beside its buckets); else a gauge named so.
        counted = bool(_COUNTER_FUNCTIONS & set(under)) or family_name(series) in buckets
        return Kind.HISTOGRAM if counted else Kind.GAUGE
    if series.endswith("_total"):
        return Kind.COUNTER
    return Kind.GAUGE


_OPS = (("=", pp.MatchOp.Equal), ("!=", pp.MatchOp.NotEqual), ("=~", pp.MatchOp.Re), ("!~", pp.MatchOp.NotRe))


def _op(op: Any) -> str:
    # MatchOp is not hashable: compared, not looked up.
    return next(text for text, member in _OPS if op == member)


def _variables(plan: RolloutPlan) -> dict[str, str]:
    phase = plan.phases[0]
    scope = gates.Scope(plan.namespace(phase), plan.target.deployment, CANARY)
    return gates.variables(plan, scope, CANARY, "5m")


def rendered_query(plan: RolloutPlan, metric: str) -> str:
    """The metric's template as the rehearsal would run it for the canary."""
    return templates.render(plan.metrics[metric].query, _variables(plan))


def selectors(metric: str, query: str, ignore: Iterable[str] = (), track_values: Iterable[str] = ()) -> list[Selector]:
    """Every vector selector of ``query``, with the functions it sits under.

    ``ignore``: label names, and ``track_values``: label values, that say which track a series
    is on (the plan's placeholders filled in): discovery attaches those, not the app."""
    from_track = set(track_values)
    try:
        expr = pp.parse(query)
    except (ValueError, RuntimeError) as exc:
        raise WorkloadError(f"metric {metric!r}: not PromQL the parser accepts: {exc}") from None
    skip = TARGET_LABELS | set(ignore)
    out: list[Selector] = []

    def visit(node: Any, under: tuple[str, ...]) -> None:
        if isinstance(node, pp.VectorSelector):
            name = node.name
            matchers = []
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    name = name or m.value
                elif m.name not in skip and m.value not in from_track:
                    matchers.append(Matcher(m.name, _op(m.op), m.value))
            if name:
                out.append(Selector(metric, name, tuple(matchers), under))
            return
        if isinstance(node, pp.MatrixSelector):
            visit(node.vector_selector, under)
            return
        if isinstance(node, pp.Call):
            for arg in node.args:
                visit(arg, (node.func.name, *under))
            return
        if isinstance(node, pp.AggregateExpr):
            visit(node.expr, (str(node.op).lower(), *under))
            return
        if isinstance(node, pp.BinaryExpr):
            visit(node.lhs, under)
            visit(node.rhs, under)
            return
        for attr in ("expr",):
            child = getattr(node, attr, None)
            if child is not None:
                visit(child, under)

    visit(expr, ())
    return out


def derive(plan: RolloutPlan, file: WorkloadFile | None = None) -> Workload:
    """The families every metric of ``plan`` reads, with children satisfying its matchers."""
    ignore: set[str] = set()
    if plan.labels is not None:
        ignore |= set(plan.labels.stable) | set(plan.labels.canary)
    values = _variables(plan)
    track_values = {v for k, v in values.items() if k not in ("window", "selector")}
    sels: list[Selector] = []
    for metric in plan.metrics:
        sels.extend(selectors(metric, rendered_query(plan, metric), ignore, track_values))
    by_family: dict[str, list[Selector]] = {}
    kinds: dict[str, Kind] = {}
    buckets = {family_name(s.series) for s in sels if s.series.endswith("_bucket")}
    for s in sels:
        kind = _kind(s.series, s.under, buckets)
        base = family_name(s.series) if kind is not Kind.GAUGE else s.series
        by_family.setdefault(base, []).append(s)
        if kinds.get(base) is not Kind.HISTOGRAM:
            kinds[base] = kind
    families = tuple(_family(name, kinds[name], group) for name, group in by_family.items())
    zero_metrics = {g.metric for p in plan.phases for g in p.gates() if g.kind is GateKind.ZERO}
    quiet = frozenset(f.name for f in families if zero_metrics & set(f.metrics))
    return Workload(families, tuple(sels), file or WorkloadFile(), quiet)


def _family(name: str, kind: Kind, group: list[Selector]) -> Family:
    labels = sorted({m.label for s in group for m in s.matchers} - {"le"})
    values = []
    for label in labels:
        matchers = [m for s in group for m in s.matchers if m.label == label]
        unconstrained = any(all(m.label != label for m in s.matchers) for s in group)
        choices: dict[str, bool] = {}
        for m in dict.fromkeys(matchers):
            if m.op == "=":
                choices.setdefault(m.value, _looks_bad(label, m.value))
            else:
                inside = m.value if m.op == "!=" else _matching(m.value)
                if inside is not None:
                    choices.setdefault(inside, _looks_bad(label, inside))
                unconstrained = True
        if unconstrained:
            candidates = _GOOD_CANDIDATES if label in _STATUS_LABELS else ("other", *_GOOD_CANDIDATES)
            outside = next((c for c in candidates if not any(
                m.matches(c) for m in matchers if m.op in ("=", "=~")) and c not in choices), None)
            if outside is not None:
                choices.setdefault(outside, _looks_bad(label, outside))
        values.append((label, tuple(choices.items())))
    metrics = tuple(dict.fromkeys(s.metric for s in group))
    return Family(name, kind, tuple(labels), tuple(values), metrics)


def _looks_bad(label: str, value: str) -> bool:
    return bool(_BAD_VALUE.search(value)) or (label in ("success", "ok") and value.lower() == "false")


def _fullmatch(pattern: str, value: str) -> bool:
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return False


def _matching(pattern: str) -> str | None:
    """A short string the (RE2) regex matches in whole, or ``None``."""
    try:
        import re._parser as sre
        parsed = sre.parse(pattern)
    except (re.error, ImportError):
        return None
    candidate = _generate(parsed, sre)
    if candidate is not None and _fullmatch(pattern, candidate):
        return candidate
    return next((c for c in ("500", "503", "404", "error", "a") if _fullmatch(pattern, c)), None)


def _generate(parsed: Any, sre: Any) -> str | None:
    out = []
    for op, arg in parsed:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "ANY":
            out.append("0")
        elif name == "IN":
            first = next((a for a in arg if str(a[0]) != "NEGATE"), None)
            if first is None or any(str(a[0]) == "NEGATE" for a in arg):
                out.append("x")
            elif str(first[0]) == "LITERAL":
                out.append(chr(first[1]))
            elif str(first[0]) == "RANGE":
                out.append(chr(first[1][0]))
            else:
                out.append(_category(first[1]))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _hi, sub = arg
            piece = _generate(sub, sre)
            if piece is None:
                return None
            out.append(piece * lo)
        elif name == "SUBPATTERN":
            piece = _generate(arg[-1], sre)
            if piece is None:
                return None
            out.append(piece)
        elif name == "BRANCH":
            piece = _generate(arg[1][0], sre)
            if piece is None:
                return None
            out.append(piece)
        elif name == "AT":
            continue
        elif name == "CATEGORY":
            out.append(_category(arg))
        else:
            return None
    return "".join(out)


def _category(cat: Any) -> str:
    name = str(cat)
    return "0" if "DIGIT" in name and "NOT" not in name else ("a" if "WORD" in name else " ")


# --- faults in the plan's language ------------------------------------------------------


@dataclass(frozen=True)
class FamilyEffect:
    """How the new version's pods change one family; the identity is healthy."""

    latency_shift: float = 0.0  # added to every observation, in the family's unit
    latency_scale: float = 1.0  # every observation multiplied
    error_share: float | None = None  # share of events on error children (replaces the healthy share)
    rate_factor: float = 1.0  # events per second multiplied
    service_rate: float = 0.0  # extra events per second across the new version's pods (error counters)
    level: float | None = None  # a gauge's value
    absent: bool = False  # the family is not exported at all

    def combine(self, other: FamilyEffect) -> FamilyEffect:
        share = other.error_share if self.error_share is None else (
            self.error_share if other.error_share is None else max(self.error_share, other.error_share))
        return FamilyEffect(
            self.latency_shift + other.latency_shift, self.latency_scale * other.latency_scale, share,
            self.rate_factor * other.rate_factor, self.service_rate + other.service_rate,
            other.level if other.level is not None else self.level, self.absent or other.absent,
        )


NO_EFFECT = FamilyEffect()
RAW_EFFECTS = ("latency_shift", "latency_scale", "error_share", "rate_factor", "counter_rate", "level", "absent")


def raw_effect(values: Mapping[str, Any]) -> FamilyEffect:
    """A scenario's raw effect fields (``RAW_EFFECTS``) as a ``FamilyEffect``."""
    return FamilyEffect(
        latency_shift=float(values.get("latency_shift") or 0.0),
        latency_scale=float(values.get("latency_scale") or 1.0),
        error_share=values.get("error_share"),
        rate_factor=float(values.get("rate_factor") or 1.0),
        service_rate=float(values.get("counter_rate") or 0.0),
        level=values.get("level"),
        absent=bool(values.get("absent")),
    )


def _quantile_of(metric: str, query: str) -> float:
    """The first argument of the metric's ``histogram_quantile``."""
    found: list[float] = []

    def pre(node: Any) -> None:
        if isinstance(node, pp.Call) and node.func.name == "histogram_quantile" and not found:
            arg = node.args[0]
            if isinstance(arg, pp.NumberLiteral):
                found.append(float(arg.val))

    pp.walk(pp.parse(query), pre)
    return found[0] if found else 0.99


def gate_effects(plan: RolloutPlan, wl: Workload, gate: Gate, push: float) -> dict[str, FamilyEffect]:
    """Effects on the new version that put ``gate``'s value ``push`` times as far past its
    bound as the bound is from zero (``push: 2`` on ``p95 − stable < 0.05``: +0.1 s).

    Raises ``WorkloadError`` when no effect of this workload moves the gate's value."""
    sels = wl.selectors_of(gate.metric)
    fams = {f.name: f for f in wl.families if gate.metric in f.metrics}
    t = abs(gate.threshold)
    rising = gate.op in ("<", "<=", "==") or gate.kind is GateKind.ZERO or gate.kind is GateKind.JUDGE
    compared = gate.kind in (GateKind.DELTA, GateKind.RATIO, GateKind.JUDGE)
    # Latency: a histogram read under histogram_quantile.
    hist = [fams[family_name(s.series)] for s in sels if "histogram_quantile" in s.under
            and family_name(s.series) in fams]
    if hist and gate.kind is not GateKind.ZERO:
        fam = hist[0]
        lv = wl.levels(fam)
        v0 = lv.latency.quantile(_quantile_of(gate.metric, rendered_query(plan, gate.metric)))
        if not rising:
            raise WorkloadError(f"gate {gate.name!r}: a latency fault only raises {gate.metric!r}, and the gate "
                                f"fails when it falls ({gate.bound}); give a raw effect instead")
        if gate.kind is GateKind.RATIO:
            effect = FamilyEffect(latency_scale=max(push * gate.threshold, 1.0 + push * 0.1))
        elif gate.kind is GateKind.JUDGE:
            tolerance = (gate.judge.tolerance if gate.judge else 0.05)
            effect = FamilyEffect(latency_scale=1.0 + push * max(tolerance, 0.05) * 2)
        elif gate.kind is GateKind.DELTA:
            effect = FamilyEffect(latency_shift=push * t if t else push * 0.1 * v0)
        else:
            effect = FamilyEffect(latency_shift=max(push * gate.threshold - v0, 0.0))
        return {fam.name: effect}
    # Errors: a family whose error children the metric's selectors pick out, or an error counter.
    picked = [f for f in fams.values() if f.has_bad and any(_constrains_bad(s, f) for s in sels if _reads(s, f))]
    counters = [f for f in fams.values() if f.kind is Kind.COUNTER and _BAD_NAME.search(f.name) and f not in picked]
    if picked or counters:
        fam = (picked or counters)[0]
        base = wl.levels(fam).error_share
        # An error counter: more of it raises an error rate and lowers a success rate.
        bad_selected = any(_selects_bad(s, fam) for s in sels if _reads(s, fam)) if picked else rising
        share: float
        if gate.kind is GateKind.ZERO:
            share = min(1.0, 0.01 * push)
        elif gate.kind is GateKind.RATIO:
            share = min(1.0, max(base, 0.001) * push * max(t, 1.0))
        elif gate.kind is GateKind.JUDGE:
            share = min(1.0, max(base, 0.001) * (1 + push * 10))
        elif bad_selected and rising:
            share = min(1.0, base + push * t) if compared else min(1.0, push * t)
        elif not bad_selected and not rising:
            share = min(1.0, base + push * t) if compared else min(1.0, push * (1 - t))
        else:
            raise WorkloadError(f"gate {gate.name!r}: more errors move {gate.metric!r} away from its bound "
                                f"({gate.bound}); give a raw effect instead")
        return {fam.name: FamilyEffect(error_share=share)}
    gauges = [f for f in fams.values() if f.kind is Kind.GAUGE]
    if gauges and gate.kind is not GateKind.ZERO:
        fam = gauges[0]
        level0 = wl.levels(fam).level
        if gate.kind is GateKind.DELTA:
            level = level0 + push * t if rising else level0 - push * t
        elif gate.kind is GateKind.RATIO:
            level = level0 * push * gate.threshold if rising else level0 * gate.threshold / push
        elif gate.kind is GateKind.ABSOLUTE:
            level = push * gate.threshold if rising else gate.threshold / push
        else:
            level = level0 * (1 + push)
        return {fam.name: FamilyEffect(level=level)}
    # A ratio of counters (refresh calls per expiration): the numerator's events multiplied.
    ratio = _counter_ratio(rendered_query(plan, gate.metric), fams)
    if ratio is not None and gate.kind is not GateKind.ZERO:
        num, den = ratio
        v0 = wl.event_rate(num) / max(wl.event_rate(den), 1e-9)
        if gate.kind is GateKind.DELTA:
            target = v0 + push * t if rising else v0 - push * t
        elif gate.kind is GateKind.RATIO:
            target = v0 * push * t if rising else v0 * t / push
        elif gate.kind is GateKind.ABSOLUTE:
            target = push * t if rising else t / push
        else:  # judge
            target = v0 * (1 + 0.2 * push) if rising else v0 / (1 + 0.2 * push)
        return {num.name: FamilyEffect(rate_factor=max(target, 0.0) / v0)}
    raise WorkloadError(f"gate {gate.name!r}: no effect of the workload derived from {gate.metric!r} moves it "
                        f"(families: {', '.join(fams) or 'none'}); give a raw effect on a metric instead")


def _counter_ratio(query: str, fams: Mapping[str, Family]) -> tuple[Family, Family] | None:
    """(numerator, denominator) when ``query`` divides one counter family's increase or rate
    by another's, each side reading only its own family; otherwise None."""
    expr = pp.parse(query)
    while isinstance(expr, pp.ParenExpr):
        expr = expr.expr
    if not isinstance(expr, pp.BinaryExpr) or str(expr.op) != "/":
        return None

    def only_family(side: Any) -> Family | None:
        names: set[str] = set()

        def pre(node: Any) -> None:
            if isinstance(node, pp.VectorSelector):
                names.add(family_name(node.name or ""))

        pp.walk(side, pre)
        fam = fams.get(next(iter(names))) if len(names) == 1 else None
        return fam if fam is not None and fam.kind is Kind.COUNTER else None

    num, den = only_family(expr.lhs), only_family(expr.rhs)
    return (num, den) if num is not None and den is not None and num.name != den.name else None


def _reads(s: Selector, fam: Family) -> bool:
    return s.series == fam.name or family_name(s.series) == fam.name


def _constrains_bad(s: Selector, fam: Family) -> bool:
    """Whether ``s`` has a matcher on a label of ``fam`` that has error values."""
    bad_labels = {label for label, choices in fam.values if any(bad for _, bad in choices)}
    return any(m.label in bad_labels for m in s.matchers)


def _selects_bad(s: Selector, fam: Family) -> bool:
    """Whether ``s`` picks the family's error children and leaves out the others."""
    relevant = [m for m in s.matchers if m.label in fam.label_names]
    if not relevant:
        return False
    kids = fam.children(0.5)
    picked = [c for c in kids if s.selects(dict(c.labels))]
    return bool(picked) and all(c.bad for c in picked)


# --- the workload file -----------------------------------------------------------------


def check_file(workload: Workload, source: Source | None) -> None:
    """Every family the workload file levels must be one the plan's queries read."""
    known = ", ".join(f.name for f in workload.families)
    problems = [
        f"{source.name if source else '<workload>'}:{source.line_of(('metrics', name)) if source else 1}: "
        f"metrics.{name}: no query of the plan reads a metric family {name!r}; it reads: {known}"
        for name in workload.file.metrics if workload.family(name) is None
    ]
    if problems:
        raise WorkloadError("\n".join(problems))


def load_workload_file(path: str | Path) -> tuple[WorkloadFile, Source]:
    """Parse a ``--workload`` file; errors are ``WorkloadError`` lines ``FILE:LINE: path: message``."""
    try:
        source = load_file(path)
    except SourceError as exc:
        raise WorkloadError(str(exc)) from None
    try:
        return WorkloadFile.model_validate(source.data or {}), source
    except ValidationError as exc:
        lines = [f"{source.name}:{source.line_of(tuple(e['loc']))}: {'.'.join(str(p) for p in e['loc'])}: "
                 f"{e['msg']}" for e in exc.errors()]
        raise WorkloadError("\n".join(lines)) from None
