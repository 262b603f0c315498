"""Fault scenarios: built-ins load, typos are errors naming the field, faults add up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from phasegate.rehearsal.scenarios import (
    HEALTHY,
    Scenario,
    ScenarioError,
    builtin_names,
    load_scenario,
    parse_scenario,
)

REQUIRED = {
    "healthy", "token-not-active", "latency-regression", "latency-marginal", "error-rate", "lock-timeouts",
    "prometheus-outage", "bad-image",
}


def test_all_required_built_ins_exist() -> None:
    assert set(builtin_names()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_built_in_loads_by_name(name: str) -> None:
    assert load_scenario(name).name == name


def test_healthy_has_no_effects() -> None:
    assert load_scenario("healthy").effects(1e12, {"canary-10pct": 0.0}, 0.0) == HEALTHY


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("latency-regression", "latency_add_ms", 80),
        ("latency-marginal", "latency_add_ms", 30),
        ("error-rate", "error_rate_add", 0.005),
        ("lock-timeouts", "lock_timeout_ratio", 0.03),
        # 2/s, not 0.2/s: a few seconds of rehearsed canary soak must hold errors with near certainty.
        ("token-not-active", "token_not_active_per_s", 2.0),
    ],
)
def test_built_in_fault_sizes_match_the_plan_thresholds_they_probe(name: str, field: str, value: float) -> None:
    fault = load_scenario(name).faults[0]
    assert getattr(fault, field) == value
    assert (fault.phase, fault.after_seconds) == ("canary-10pct", 600)


def test_fault_is_inactive_until_its_phase_is_seen_then_after_its_offset() -> None:
    scenario = load_scenario("latency-regression")
    assert scenario.effects(5000.0, {}, 0.0) == HEALTHY
    assert scenario.effects(1000.0 + 599, {"canary-10pct": 1000.0}, 0.0) == HEALTHY
    assert scenario.effects(1000.0 + 600, {"canary-10pct": 1000.0}, 0.0).latency_add_ms == 80


def test_faults_add_up_and_ratios_cap_at_one() -> None:
    scenario = parse_scenario(
        "name: x\nfaults:\n  - {error_rate_add: 0.7}\n  - {error_rate_add: 0.6, latency_add_ms: 10}\n"
        "  - {latency_add_ms: 5}\n"
    )
    effects = scenario.effects(0.0, {}, 0.0)
    assert (effects.error_rate_add, effects.latency_add_ms) == (1.0, 15)


def test_prometheus_outage_is_data_for_the_driver() -> None:
    scenario = load_scenario("prometheus-outage")
    assert scenario.outage_window({}, 0.0) is None
    assert scenario.outage_window({"canary-10pct": 100.0}, 0.0) == (100.0 + 1800, 100.0 + 1800 + 900)
    assert scenario.faults == []


def test_bad_image_is_data_for_the_cluster_emulator() -> None:
    assert load_scenario("bad-image").bad_image
    assert not load_scenario("healthy").bad_image


def test_unknown_field_is_an_error_naming_it() -> None:
    with pytest.raises(ScenarioError, match=r"faults\.0\.latency_ms: Extra inputs are not permitted"):
        parse_scenario("name: x\nfaults:\n  - {latency_ms: 80}\n")


def test_bad_duration_is_an_error_showing_the_accepted_form() -> None:
    with pytest.raises(ScenarioError, match=r"faults\.0\.after: .*'30s', '5m'"):
        parse_scenario("name: x\nfaults:\n  - {after: 10 minutes, latency_add_ms: 1}\n")


def test_fault_that_changes_nothing_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="must change at least one"):
        parse_scenario("name: x\nfaults:\n  - {phase: canary-10pct}\n")


def test_negative_or_over_one_values_are_errors() -> None:
    with pytest.raises(ScenarioError, match="error_rate_add"):
        parse_scenario("name: x\nfaults:\n  - {error_rate_add: 1.5}\n")


def test_unknown_name_lists_the_built_ins() -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'; built-in: .*token-not-active"):
        load_scenario("nope")


def test_scenario_loads_from_a_file_and_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nfaults:\n  - {phase: canary-50pct, after: 1h, latency_add_ms: 10}\n")
    assert load_scenario(good) == Scenario(
        name="mine", faults=[{"phase": "canary-50pct", "after": "1h", "latency_add_ms": 10}]  # type: ignore[list-item]
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=re.escape(str(bad))):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.yaml")
