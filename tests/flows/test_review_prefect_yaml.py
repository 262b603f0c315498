"""prefect.yaml: parses, names the deployments the plan needs, and points at real flows."""

from __future__ import annotations

import importlib
import inspect
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from phasegate.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
REVIEW_DEPLOYMENTS = {"hourly-review": "hourly", "daily-review": "daily", "weekly-summary": "weekly-summary",
                      "bi-weekly-review": "bi-weekly"}


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    data = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in data["deployments"]}


def test_prefect_yaml_has_the_rollout_review_and_signoff_deployments(deployments: dict[str, dict]) -> None:
    assert set(deployments) == {"pre-deployment-checklist", "progressive-rollout", "sign-off", *REVIEW_DEPLOYMENTS,
                                "rollback-immediate", "rollback-canary", "rollback-feature-flag", "rollback-candidate"}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"phasegate"}


def test_entrypoints_resolve_to_flows_taking_the_given_parameters(deployments: dict[str, dict]) -> None:
    checked = 0
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        # A worker starts the entry flow in a bare process: only the entry layer builds the
        # run context from settings, so every deployment must start there.
        assert path.startswith("phasegate/entry/"), deployment["name"]
        target = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(target, Flow), deployment["entrypoint"]
        accepted = inspect.signature(target.fn).parameters
        assert set(deployment["parameters"]) <= set(accepted), deployment["name"]
        checked += 1
    assert checked == len(deployments)


def test_review_schedules_match_the_plans_cadence_periods(deployments: dict[str, dict]) -> None:
    plan = load_plan(ROOT / deployments["daily-review"]["parameters"]["plan_path"])
    assert plan.reviews is not None
    every = {c.name: c.every for c in plan.reviews.cadence}
    for name, cadence in REVIEW_DEPLOYMENTS.items():
        deployment = deployments[name]
        assert deployment["parameters"]["cadence"] == cadence
        (schedule,) = deployment["schedules"]
        if "interval" in schedule:
            parsed = IntervalSchedule(interval=schedule["interval"], anchor_date=schedule["anchor_date"])
            assert parsed.interval == every[cadence]
        else:
            cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
            _, hour, _, _, weekday = cron.cron.split()
            # A fixed weekday repeats weekly, a fixed hour daily, a fixed minute hourly.
            period = timedelta(weeks=1) if weekday != "*" else timedelta(days=1) if hour != "*" else timedelta(hours=1)
            assert period == every[cadence], name


def test_signoff_runs_daily(deployments: dict[str, dict]) -> None:
    (schedule,) = deployments["sign-off"]["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone="UTC").cron.split()[2:] == ["*", "*", "*"]


def test_the_rollback_candidate_trigger_parses_as_prefect_deploy_reads_it(deployments: dict[str, dict]) -> None:
    from phasegate.entry.register import deployment_triggers

    (trigger,) = deployment_triggers(deployments["rollback-candidate"])
    assert trigger.expect == {"phasegate.alert.firing"}
    assert trigger.parameters == {"plan_path": deployments["rollback-candidate"]["parameters"]["plan_path"],
                                  "alert": "{{ event.payload.alert }}"}
    plan = load_plan(ROOT / trigger.parameters["plan_path"])
    assert trigger.match.model_dump()["phasegate.plan"] == plan.name
