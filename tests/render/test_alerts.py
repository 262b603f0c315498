"""Alert rules rendered from the seed plan, checked and unit-tested by the real promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from phasegate.plan import RolloutPlan, load_plan
from phasegate.render.alerts import render_alerts, to_yaml
from tests.fixtures.common import require_binary

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
CHECKED_IN = ROOT / "deployments/rules/token-refresh-locking.rules.yaml"
PROD = 'namespace="bodhi",pod=~"bodhi-server(-canary)?-'  # a standing alert selects both tracks' pods
# Series as a ServiceMonitor labels them: by namespace and pod, no deployment or track label.
STABLE_POD = 'namespace="bodhi",pod="bodhi-server-5f6d8b9c7d-4xj2p"'
CANARY_POD = 'namespace="bodhi",pod="bodhi-server-canary-7d9c5b8f4-x2kqz"'
SEED_LABELS = {"plan": "token-refresh-locking"}


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


@pytest.fixture(scope="module")
def rules_file(plan: RolloutPlan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(to_yaml(render_alerts(plan)))
    return path


def _rules(plan: RolloutPlan) -> dict[str, dict]:
    return {r["alert"]: r for r in render_alerts(plan)["groups"][0]["rules"]}


def _promtool_test(rules_file: Path, tests: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    promtool = require_binary("promtool")
    return subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False)


def test_rendered_rules_pass_promtool_check(rules_file: Path) -> None:
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_checked_in_rules_are_what_the_renderer_produces(plan: RolloutPlan) -> None:
    assert CHECKED_IN.read_text() == to_yaml(render_alerts(plan)), "run: phasegate render alerts PLAN -o FILE"


def test_seed_alerts_keep_their_severity_and_message(plan: RolloutPlan) -> None:
    rules = _rules(plan)
    assert rules["TokenRefreshLockTimeout"]["labels"]["severity"] == "warning"
    assert rules["TokenNotActiveError"]["labels"]["severity"] == "critical"
    assert rules["LockAcquisitionLatencyHigh"]["labels"]["severity"] == "warning"
    assert rules["TokenNotActiveError"]["annotations"]["message"] == "Token not active error detected - ROLLBACK CANDIDATE"


def test_seed_alert_expressions_name_the_production_deployment_and_a_5m_window(plan: RolloutPlan) -> None:
    for name in ("TokenRefreshLockTimeout", "TokenNotActiveError", "LockAcquisitionLatencyHigh"):
        expr = _rules(plan)[name]["expr"]
        assert PROD in expr and "[5m]" in expr and "{{" not in expr


def test_a_trigger_shared_by_four_phases_is_one_alert_listing_each_rollback(plan: RolloutPlan) -> None:
    rule = _rules(plan)["RollbackTokenNotActive"]
    assert rule["annotations"]["rollback"] == (
        "staging: full_undo; canary-10pct: canary_only; canary-50pct: canary_only; full: full_undo"
    )


def test_delta_trigger_against_stable_compares_canary_with_stable_in_promql(plan: RolloutPlan) -> None:
    expr = _rules(plan)["RollbackErrorRateIncrease"]["expr"]
    assert 'pod=~"bodhi-server-canary-' in expr and 'pod=~"bodhi-server-[' in expr and expr.endswith("> 0.001")


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def _alert_case(alert: str, series: list[dict[str, str]], fires: bool, severity: str, message: str) -> dict:
    expected = [{"exp_labels": {"severity": severity, **SEED_LABELS}, "exp_annotations": {"message": message}}]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "10m", "alertname": alert, "exp_alerts": expected if fires else []}],
    }


def _buckets(counts_per_minute: dict[str, int]) -> list[dict[str, str]]:
    # Cumulative histogram buckets; each grows by its count every minute.
    name = "token_refresh_lock_acquisition_duration_ms_bucket"
    return [
        _series(name, f'{STABLE_POD},le="{le}"', f"0+{n}x15") for le, n in counts_per_minute.items()
    ]


TIMEOUT_SERIES = "token_refresh_lock_timeouts_total"
ERROR_SERIES = "token_refresh_errors_total"
NOT_ACTIVE = f'{CANARY_POD},type="token_not_active"'

SEED_CASES = {
    # rate > 0.01/s: 6 timeouts a minute is 0.1/s; one every 10 minutes is ~0.0017/s.
    "lock_timeouts_fire_TokenRefreshLockTimeout": (
        "TokenRefreshLockTimeout", [_series(TIMEOUT_SERIES, STABLE_POD, "0+6x15")], True,
        "warning", "Lock acquisition timeouts detected",
    ),
    "rare_lock_timeouts_keep_TokenRefreshLockTimeout_quiet": (
        "TokenRefreshLockTimeout", [_series(TIMEOUT_SERIES, STABLE_POD, "0 0 0 0 0 0 0 0 1 1 1 1")],
        False, "warning", "Lock acquisition timeouts detected",
    ),
    "one_token_not_active_error_fires_TokenNotActiveError": (
        "TokenNotActiveError", [_series(ERROR_SERIES, NOT_ACTIVE, "0 0 0 0 0 0 0 0 1 1 1 1")], True,
        "critical", "Token not active error detected - ROLLBACK CANDIDATE",
    ),
    # The counter child is created on the first error, already at 1 (client libraries do):
    # increase() alone never sees it.
    "a_first_error_that_creates_its_series_fires_TokenNotActiveError": (
        "TokenNotActiveError", [_series(ERROR_SERIES, NOT_ACTIVE, "_ _ _ _ _ _ _ _ 1 1 1 1")], True,
        "critical", "Token not active error detected - ROLLBACK CANDIDATE",
    ),
    "other_error_types_keep_TokenNotActiveError_quiet": (
        "TokenNotActiveError",
        [
            _series(ERROR_SERIES, NOT_ACTIVE, "0x15"),
            _series(ERROR_SERIES, f'{CANARY_POD},type="network"', "0+5x15"),
        ],
        False, "critical", "Token not active error detected - ROLLBACK CANDIDATE",
    ),
    "slow_lock_acquisitions_fire_LockAcquisitionLatencyHigh": (
        "LockAcquisitionLatencyHigh", _buckets({"10": 10, "100": 20, "250": 100, "+Inf": 100}), True,
        "warning", "Lock acquisition p99 latency exceeds threshold",
    ),
    "fast_lock_acquisitions_keep_LockAcquisitionLatencyHigh_quiet": (
        "LockAcquisitionLatencyHigh", _buckets({"10": 100, "100": 100, "250": 100, "+Inf": 100}), False,
        "warning", "Lock acquisition p99 latency exceeds threshold",
    ),
    "an_alert_from_another_namespace_is_not_ours": (
        "TokenNotActiveError",
        [_series(ERROR_SERIES, 'namespace="other",pod="bodhi-server-canary-7d9c5b8f4-x2kqz",type="token_not_active"',
                 "0+1x15")],
        False, "critical", "Token not active error detected - ROLLBACK CANDIDATE",
    ),
}


@pytest.mark.parametrize("case", list(SEED_CASES))
def test_seed_alert_fires_only_on_its_condition(case: str, rules_file: Path, tmp_path: Path) -> None:
    alert, series, fires, severity, message = SEED_CASES[case]
    result = _promtool_test(rules_file, [_alert_case(alert, series, fires, severity, message)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_canary_error_rate_above_stable_fires_the_rollback_alert(rules_file: Path, tmp_path: Path) -> None:
    requests = "http_requests_total"
    series = [
        _series(requests, f'{STABLE_POD},code="200"', "0+6000x15"),
        _series(requests, f'{STABLE_POD},code="500"', "0+1x15"),
        _series(requests, f'{CANARY_POD},code="200"', "0+600x15"),
        _series(requests, f'{CANARY_POD},code="500"', "0+6x15"),
    ]
    expected = {
        "exp_labels": {"severity": "critical", "track": "canary", "trigger": "error-rate-increase", **SEED_LABELS},
        "exp_annotations": {
            "message": "Rollback trigger error-rate-increase breached (healthy: value − stable <= 0.001)",
            "rollback": "canary-10pct: canary_only; canary-50pct: canary_only",
            "description": "Error rate increase > 0.1%",
        },
    }
    case = {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "10m", "alertname": "RollbackErrorRateIncrease", "exp_alerts": [expected]}],
    }
    result = _promtool_test(rules_file, [case], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stable_latency_up_on_the_day_before_fires_the_pre_deploy_alert(rules_file: Path, tmp_path: Path) -> None:
    # Yesterday every request took ≤ 50 ms; now they take 100-250 ms: p99 rose by > 50 ms.
    name = "api_response_time_ms_bucket"
    minutes_per_day = 1440
    before = minutes_per_day + 5

    def bucket(le: str, old: int, new: int) -> dict[str, str]:
        return _series(name, f'{STABLE_POD},le="{le}"', f"0+{old}x{before} {old * before}+{new}x20")

    series = [bucket("50", 100, 0), bucket("250", 100, 100), bucket("+Inf", 100, 100)]
    case = {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": f"{before - 10}m", "alertname": "RollbackP99LatencyIncreaseVsPreDeploy", "exp_alerts": []},
            {
                "eval_time": f"{before + 15}m",
                "alertname": "RollbackP99LatencyIncreaseVsPreDeploy",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "track": "stable", "trigger": "p99-latency-increase",
                                       **SEED_LABELS},
                        "exp_annotations": {
                            "message": "Rollback trigger p99-latency-increase breached (healthy: value − pre-deploy <= 50)",
                            "rollback": "full: full_undo",
                        },
                    }
                ],
            },
        ],
    }
    result = _promtool_test(rules_file, [case], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
