"""Fault scenarios for rehearsals: how the *new version* misbehaves, and when.

Design decisions:

* A scenario is data (YAML validated by pydantic with ``extra="forbid"``), so a typo such
  as ``latency_ms`` is an error naming the field, not a silently healthy rehearsal.
* A fault describes the new version, not a track: the synthetic app applies it to
  whichever track runs the new image (staging, canary, or stable after promotion), and
  only while the feature flag is on, since the flag switches the new code path off.
* A fault starts at a phase plus a plan-time offset (``phase: canary-10pct, after: 10m``),
  counted from when the app first observes that phase; without a phase, from app start.
  Once started it stays: a defect does not heal when the rollout moves on.
* Rates (``token_not_active_per_s``) are per wall second, like the app's traffic, because
  Prometheus scrapes and computes ``rate()`` in wall time.
* What the app cannot do itself is exposed as data for the rehearsal driver and the
  cluster emulator: ``prometheus_outage`` (stop Prometheus, start it again) and
  ``bad_image`` (the new image never becomes ready).
* Three forms of fault. **In the plan's language**: ``{phase: canary-5pct, after: 10m, gate:
  p95-ratio, push: 2.0}`` puts that gate's value ``push`` times as far past its bound as the
  bound is from zero (``workload.gate_effects`` picks the effect). **Raw, on a metric family**
  the plan's queries read: ``{metric: http_server_requests_seconds, latency_shift: 0.2}``
  (also ``latency_scale``, ``error_share``, ``rate_factor``, ``counter_rate``, ``level``,
  ``absent``). Both act on the workload derived from the plan's queries. **The seed's
  token-refresh model** (``token_not_active_per_s``, ``lock_timeout_ratio``, ...) keeps the
  built-in scenarios working for plans that read the seed's metrics; on such a plan a gate
  fault is translated into that model's terms (``p99-latency-increase`` pushed 1.6× is the
  built-in ``latency-regression``'s +80 ms), so the seed keeps its richer model.
* A scenario is checked against the plan before anything starts (``resolve``): a phase, gate
  or metric family the plan lacks is an error at ``FILE:LINE``, as a plan's own errors are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phasegate import errors
from phasegate.durations import parse_duration
from phasegate.plan import Gate, RolloutPlan
from phasegate.rehearsal import workload as wl
from phasegate.yamlsource import Source, SourceError, load_text

_EFFECTS = ("token_not_active_per_s", "session_not_active_per_s",
            "latency_add_ms", "error_rate_add", "lock_timeout_ratio", "lock_latency_add_ms",
            "extra_refreshes_per_expiration")
_RAW = wl.RAW_EFFECTS


class ScenarioError(errors.PermanentError):
    """A scenario name is unknown or its file is invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


class _Timed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    phase: str | None = Field(None, description="Phase whose first sighting starts the clock; none: app start")
    after: str = Field("0s", description="Plan-time offset from that moment, e.g. '10m'")

    _validate_after = field_validator("after")(_check_duration)

    @property
    def after_seconds(self) -> float:
        return parse_duration(self.after).total_seconds()

    def starts_at(self, phase_seen: Mapping[str, float], origin: float) -> float | None:
        """Plan time this starts, or ``None`` while its phase has not been seen."""
        base = origin if self.phase is None else phase_seen.get(self.phase)
        return None if base is None else base + self.after_seconds


class Fault(_Timed):
    """One change in the new version's behaviour, from a phase and offset on."""

    token_not_active_per_s: float = Field(0.0, ge=0, description="'Token is not active' errors per second")
    session_not_active_per_s: float = Field(
        0.0, ge=0, description="'Session not active' refusals per second: an authentication error that is not a "
        "token-not-active one (Keycloak ended the session)")
    latency_add_ms: float = Field(0.0, ge=0, description="Added to every API response time (moves p99)")
    error_rate_add: float = Field(0.0, ge=0, le=1, description="Extra share of requests answered 5xx")
    lock_timeout_ratio: float = Field(0.0, ge=0, le=1, description="Share of lock acquisitions that time out")
    lock_latency_add_ms: float = Field(0.0, ge=0, description="Added to every lock acquisition wait")
    extra_refreshes_per_expiration: float = Field(
        0.0, ge=0, description="Refresh calls beyond one per expiration: the lock lets waiters refresh too (the bug)")
    despite_flag: bool = Field(
        False, description="The fault is in the new version itself, not behind its feature flag: switching the "
        "flag off does not cure it",
    )
    gate: str | None = Field(None, description="A gate of `phase` this fault breaks (with `push`)")
    push: float | None = Field(None, gt=0, description="How far past the gate's bound, in multiples of it")
    metric: str | None = Field(None, description="A metric family the plan's queries read, for a raw effect")
    latency_shift: float = Field(0.0, ge=0, description="Added to every observation, in the histogram's unit")
    latency_scale: float | None = Field(None, gt=0, description="Every observation of the histogram multiplied")
    error_share: float | None = Field(None, ge=0, le=1, description="Share of the family's events on error series")
    rate_factor: float | None = Field(None, ge=0, description="The family's events per second multiplied")
    counter_rate: float = Field(0.0, ge=0, description="Extra events per second across the new version's pods")
    level: float | None = Field(None, description="A gauge's value")
    absent: bool = Field(False, description="The new version does not export the family at all")

    @property
    def form(self) -> str:
        """``gate`` (the plan's language), ``metric`` (raw effect) or ``seed`` (token-refresh model)."""
        return "gate" if self.gate is not None else "metric" if self.metric is not None else "seed"

    @model_validator(mode="after")
    def _changes_something(self) -> Fault:
        raw = [n for n in _RAW if getattr(self, n) not in (None, 0.0, False)]
        seed = [n for n in _EFFECTS if getattr(self, n)]
        if self.gate is not None:
            if self.push is None:
                raise ValueError("a gate fault needs push: how far past the gate's bound (2.0: twice)")
            if self.phase is None:
                raise ValueError("a gate fault needs the phase whose gate it breaks")
            if raw or seed or self.metric is not None:
                raise ValueError("a gate fault takes gate and push only: the effect follows from the gate")
        elif self.push is not None:
            raise ValueError("push needs a gate")
        elif self.metric is not None:
            if not raw:
                raise ValueError(f"a metric fault must change at least one of {', '.join(_RAW)}")
            if seed:
                raise ValueError(f"{', '.join(seed)} belong to the token-refresh model, not to a metric fault")
        elif raw:
            raise ValueError(f"{', '.join(raw)} act on a metric family: name it with metric")
        elif not seed:
            raise ValueError(f"a fault must change at least one of {', '.join(_EFFECTS)}, or name a gate "
                             "(with push) or a metric (with an effect)")
        return self


class Outage(_Timed):
    """Prometheus is down from ``starts_at`` for ``for`` of plan time (the driver acts on it)."""

    for_: str = Field(alias="for", description="How long Prometheus stays down, e.g. '15m'")

    _validate_for = field_validator("for_")(_check_duration)

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_).total_seconds()


@dataclass(frozen=True)
class Effects:
    """The sum of the faults active at one moment; all zero means healthy."""

    token_not_active_per_s: float = 0.0
    session_not_active_per_s: float = 0.0
    latency_add_ms: float = 0.0
    error_rate_add: float = 0.0
    lock_timeout_ratio: float = 0.0
    lock_latency_add_ms: float = 0.0
    extra_refreshes_per_expiration: float = 0.0


HEALTHY = Effects()


class Scenario(BaseModel):
    """A named rehearsal: the new version's faults and the outages around it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name, used in reports")
    description: str = Field("", description="One sentence for the rehearsal's report")
    faults: list[Fault] = Field(default_factory=list, description="Misbehaviours of the new version")
    prometheus_outage: Outage | None = Field(None, description="Stop Prometheus for a while (driver)")
    bad_image: bool = Field(False, description="The new image never becomes ready (cluster emulator)")

    def effects(self, now: float, phase_seen: Mapping[str, float], origin: float, *,
                flag_enabled: bool = True) -> Effects:
        """What the new version does differently at plan time ``now`` (with its flag off,
        only the faults that are not behind the flag)."""
        totals = dict.fromkeys(_EFFECTS, 0.0)
        for fault in self.faults:
            if not (flag_enabled or fault.despite_flag):
                continue
            start = fault.starts_at(phase_seen, origin)
            if start is not None and now >= start:
                for name in _EFFECTS:
                    totals[name] += getattr(fault, name)
        totals["error_rate_add"] = min(1.0, totals["error_rate_add"])
        totals["lock_timeout_ratio"] = min(1.0, totals["lock_timeout_ratio"])
        return Effects(**totals)

    def outage_window(self, phase_seen: Mapping[str, float], origin: float) -> tuple[float, float] | None:
        """Plan-time (start, end) of the Prometheus outage, once its phase has been seen."""
        if self.prometheus_outage is None:
            return None
        start = self.prometheus_outage.starts_at(phase_seen, origin)
        return None if start is None else (start, start + self.prometheus_outage.for_seconds)


@dataclass(frozen=True)
class TimedEffects:
    """A fault of the plan's language or a raw one, as effects on the derived workload's families."""

    fault: Fault
    effects: dict[str, wl.FamilyEffect]


@dataclass(frozen=True)
class Resolved:
    """A scenario checked against a plan: which app model it needs, and its family effects."""

    scenario: Scenario
    derived: bool  # the workload derived from the plan's queries; else the seed's token-refresh model
    faults: tuple[TimedEffects, ...]

    def family_effects(self, now: float, phase_seen: Mapping[str, float], origin: float, *,
                       flag_enabled: bool = True) -> dict[str, wl.FamilyEffect]:
        out: dict[str, wl.FamilyEffect] = {}
        for timed in self.faults:
            if not (flag_enabled or timed.fault.despite_flag):
                continue
            start = timed.fault.starts_at(phase_seen, origin)
            if start is not None and now >= start:
                for family, effect in timed.effects.items():
                    out[family] = out.get(family, wl.NO_EFFECT).combine(effect)
        return out


def resolve(scenario: Scenario, plan: RolloutPlan, workload: wl.Workload | None, *, seed_covers: bool,
            source: Source | None = None) -> Resolved:
    """Check ``scenario`` against ``plan`` and translate its faults; ``ScenarioError`` lists
    every problem as ``FILE:LINE: path: message``.

    ``seed_covers``: the plan reads only what the seed's token-refresh model exports, so
    seed-form faults can act on it; a plan for another service needs gate or metric faults."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    phases = {p.name: p for p in plan.phases}
    forms = {f.form for f in scenario.faults}
    # Gate faults on a plan the seed's model covers are translated into that model's terms.
    derived = "metric" in forms or not seed_covers
    timed: list[TimedEffects] = []
    faults: list[Fault] = []
    for i, fault in enumerate(scenario.faults):
        path: tuple[str | int, ...] = ("faults", i)
        if fault.phase is not None and fault.phase not in phases:
            problems.append(((*path, "phase"), f"the plan has no phase {fault.phase!r}; its phases: "
                             f"{', '.join(phases)}"))
            continue
        if fault.form == "seed":
            if derived:
                problems.append((path, "this is a fault of the seed's token-refresh model, and "
                                 + ("this scenario also has metric faults" if seed_covers else
                                    f"plan {plan.name!r} reads other metrics")
                                 + ": name a gate (with push) or a metric family (with an effect)"))
            faults.append(fault)
            continue
        if workload is None:
            problems.append((path, "no workload could be derived from the plan's queries"))
            continue
        if fault.form == "gate":
            assert fault.gate is not None and fault.phase is not None and fault.push is not None
            phase = phases[fault.phase]
            gate = next((g for g in phase.gates() if g.name == fault.gate), None)
            if gate is None:
                problems.append(((*path, "gate"), f"phase {phase.name!r} has no gate {fault.gate!r}; its gates: "
                                 f"{', '.join(g.name for g in phase.gates()) or 'none'}"))
                continue
            try:
                effects = wl.gate_effects(plan, workload, gate, fault.push)
            except wl.WorkloadError as exc:
                problems.append(((*path, "gate"), str(exc)))
                continue
            if derived:
                timed.append(TimedEffects(fault, effects))
                continue
            try:
                faults.append(_in_seed_terms(fault, effects, workload, gate))
            except ValueError as exc:
                problems.append(((*path, "gate"), str(exc)))
            continue
        assert fault.metric is not None
        family = workload.family(fault.metric)
        if family is None and fault.metric in plan.metrics:
            # A catalogue key stands for the one family its query reads.
            reading = [f for f in workload.families if fault.metric in f.metrics]
            family = reading[0] if len(reading) == 1 else None
        if family is None:
            problems.append(((*path, "metric"), f"no query of the plan reads a metric family {fault.metric!r}; "
                             f"it reads: {', '.join(f.name for f in workload.families)}"))
            continue
        wrong = _wrong_kind(fault, family)
        if wrong:
            problems.append(((*path, "metric"), wrong))
            continue
        timed.append(TimedEffects(fault, {family.name: wl.raw_effect(fault.model_dump())}))
    if scenario.prometheus_outage is not None and scenario.prometheus_outage.phase not in (None, *phases):
        problems.append((("prometheus_outage", "phase"), f"the plan has no phase "
                         f"{scenario.prometheus_outage.phase!r}; its phases: {', '.join(phases)}"))
    if problems:
        name = source.name if source is not None else scenario.name
        raise ScenarioError([f"{name}:{source.line_of(p) if source is not None else 1}: "
                             f"{'.'.join(str(x) for x in p) or '(top)'}: {m}" for p, m in problems])
    if not derived:
        scenario = scenario.model_copy(update={"faults": faults})
    return Resolved(scenario, derived, tuple(timed))


# How the seed's token-refresh model (app.py) expresses an effect on one of its families.
_SEED_TERMS = {
    ("api_response_time_ms", "latency"): "latency_add_ms",
    ("token_refresh_lock_acquisition_duration_ms", "latency"): "lock_latency_add_ms",
    ("http_requests", "error_share"): "error_rate_add",
    ("token_refresh_lock_timeouts", "error_share"): "lock_timeout_ratio",
    ("concurrency_lock_acquisitions", "error_share"): "lock_timeout_ratio",
    # Which type of refresh error depends on the gate: the one it reads (_error_type).
    ("token_refresh_errors", "error_share"): "token_not_active_per_s",
    ("token_refresh_calls", "rate_factor"): "extra_refreshes_per_expiration",
}
# The seed model's requests per replica per second in a rehearsal (world.REHEARSAL_TRAFFIC):
# an error share of them is that many "Token is not active" errors a second.
_SEED_REQUESTS_PER_S = 200.0


# The refresh error types the seed's model emits besides lock timeouts, each its own fault.
_ERROR_TYPES = {"session_not_active": "session_not_active_per_s", "token_not_active": "token_not_active_per_s"}


def _error_type(workload: wl.Workload, gate: Gate) -> str:
    """The seed fault whose refresh errors ``gate`` reads: a gate on every type ("zero
    authentication errors") is broken by a type a token-not-active trigger does not read, so
    its criterion can break alone, as it can in production."""
    sels = [s for s in workload.selectors_of(gate.metric) if s.series == "token_refresh_errors_total"]
    for kind, key in _ERROR_TYPES.items():
        if any(s.selects({"type": kind}) for s in sels):
            return key
    return "token_not_active_per_s"


def _in_seed_terms(fault: Fault, effects: Mapping[str, wl.FamilyEffect], workload: wl.Workload,
                   gate: Gate) -> Fault:
    """A gate fault as the seed-model fault with the same effect, from the same moment."""
    values: dict[str, float] = {}
    for family, effect in effects.items():
        if effect.latency_shift or effect.latency_scale != 1.0:
            fam = workload.family(family)
            assert fam is not None
            healthy_p99 = workload.levels(fam).latency.quantile(0.99)
            key = _SEED_TERMS.get((family, "latency"))
            amount = effect.latency_shift + (effect.latency_scale - 1.0) * healthy_p99
        elif effect.error_share is not None:
            key = _SEED_TERMS.get((family, "error_share"))
            if key == "token_not_active_per_s":
                key = _error_type(workload, gate)
            amount = effect.error_share * (_SEED_REQUESTS_PER_S if key in _ERROR_TYPES.values() else 1.0)
        elif effect.rate_factor > 1.0:
            # The seed's new code refreshes once per expiration: a factor on its refresh calls
            # is that many extra refreshes per expiration.
            key = _SEED_TERMS.get((family, "rate_factor"))
            amount = effect.rate_factor - 1.0
        else:
            key, amount = None, 0.0
        if key is None:
            raise ValueError(f"the seed's token-refresh model cannot change {family!r} that way; "
                             "give a token-refresh fault (token_not_active_per_s, latency_add_ms, ...)")
        values[key] = values.get(key, 0.0) + amount
    return Fault(phase=fault.phase, after=fault.after, despite_flag=fault.despite_flag, **values)


def _wrong_kind(fault: Fault, family: wl.Family) -> str | None:
    latency = fault.latency_shift or fault.latency_scale is not None
    if latency and family.kind is not wl.Kind.HISTOGRAM:
        return f"{family.name!r} is a {family.kind.value}, not a histogram: it has no latency to shift"
    if fault.level is not None and family.kind is not wl.Kind.GAUGE:
        return f"{family.name!r} is a {family.kind.value}, not a gauge: it has no level"
    if fault.error_share is not None and not family.has_bad:
        return f"no query of the plan picks error series of {family.name!r} (e.g. status=~\"5..\"): no error share"
    return None


def builtin_names() -> list[str]:
    folder = resources.files("phasegate.rehearsal") / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (``token-not-active``) or a YAML file by path."""
    return load_scenario_source(name_or_path)[0]


def load_scenario_source(name_or_path: str | Path) -> tuple[Scenario, Source]:
    """``load_scenario``, with the lines its values came from (for ``resolve``'s errors)."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ScenarioError([f"{path}: no such scenario file"])
        return parse_scenario_source(path.read_text(), source=str(path))
    if text_name not in builtin_names():
        raise ScenarioError(
            [f"unknown scenario {text_name!r}; built-in: {', '.join(builtin_names())}, or a path to a .yaml file"]
        )
    resource = resources.files("phasegate.rehearsal") / "scenarios" / f"{text_name}.yaml"
    return parse_scenario_source(resource.read_text(), source=f"built-in scenario {text_name}")


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    return parse_scenario_source(text, source)[0]


def parse_scenario_source(text: str, source: str = "<scenario>") -> tuple[Scenario, Source]:
    try:
        loaded = load_text(text, source)
    except SourceError as exc:
        raise ScenarioError([str(exc)]) from None
    if not isinstance(loaded.data, dict):
        raise ScenarioError([f"{source}:1: a scenario is a mapping with at least 'name'"])
    try:
        return Scenario.model_validate(loaded.data), loaded
    except ValidationError as exc:
        raise ScenarioError([
            f"{source}:{loaded.line_of(tuple(e['loc']))}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in exc.errors()
        ]) from None
