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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from phasegate import errors
from phasegate.durations import parse_duration

_EFFECTS = ("token_not_active_per_s", "latency_add_ms", "error_rate_add", "lock_timeout_ratio", "lock_latency_add_ms")


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
    latency_add_ms: float = Field(0.0, ge=0, description="Added to every API response time (moves p99)")
    error_rate_add: float = Field(0.0, ge=0, le=1, description="Extra share of requests answered 5xx")
    lock_timeout_ratio: float = Field(0.0, ge=0, le=1, description="Share of lock acquisitions that time out")
    lock_latency_add_ms: float = Field(0.0, ge=0, description="Added to every lock acquisition wait")
    despite_flag: bool = Field(
        False, description="The fault is in the new version itself, not behind its feature flag: switching the "
        "flag off does not cure it",
    )

    @model_validator(mode="after")
    def _changes_something(self) -> Fault:
        if not any(getattr(self, name) for name in _EFFECTS):
            raise ValueError(f"a fault must change at least one of {', '.join(_EFFECTS)}")
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
    latency_add_ms: float = 0.0
    error_rate_add: float = 0.0
    lock_timeout_ratio: float = 0.0
    lock_latency_add_ms: float = 0.0


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


def builtin_names() -> list[str]:
    folder = resources.files("phasegate.rehearsal") / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (``token-not-active``) or a YAML file by path."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ScenarioError([f"{path}: no such scenario file"])
        return parse_scenario(path.read_text(), source=str(path))
    if text_name not in builtin_names():
        raise ScenarioError(
            [f"unknown scenario {text_name!r}; built-in: {', '.join(builtin_names())}, or a path to a .yaml file"]
        )
    resource = resources.files("phasegate.rehearsal") / "scenarios" / f"{text_name}.yaml"
    return parse_scenario(resource.read_text(), source=f"built-in scenario {text_name}")


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ScenarioError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError([f"{source}: a scenario is a mapping with at least 'name'"])
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(
            [f"{source}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        ) from None
