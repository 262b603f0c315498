"""Tiny builders (Argo's newMeasurement style) so each test states only what it is about."""

from __future__ import annotations

from pathlib import Path

from phasegate.analysis import Measurement, Outcome
from phasegate.plan import Gate, Phase, RolloutPlan, Trigger, load_plan

ROOT = Path(__file__).resolve().parents[2]
SEED_PLAN_PATH = ROOT / "deployments/plans/token-refresh-locking.yaml"


def seed_plan() -> RolloutPlan:
    return load_plan(SEED_PLAN_PATH)


def gate(**kw) -> Gate:
    kw.setdefault("name", "g")
    kw.setdefault("metric", "m")
    return Gate(**kw)


def trigger(**kw) -> Trigger:
    kw.setdefault("name", "t")
    kw.setdefault("metric", "m")
    kw.setdefault("rollback", "canary_only")
    return Trigger(**kw)


def m(outcome: Outcome, gate_name: str = "g", message: str = "") -> Measurement:
    return Measurement(gate=gate_name, outcome=outcome, at=0.0, message=message)


def phase(**kw) -> Phase:
    kw.setdefault("name", "canary")
    kw.setdefault("environment", "production")
    kw.setdefault("canary_share", 10)
    kw.setdefault("soak", "1h")
    return Phase(**kw)
