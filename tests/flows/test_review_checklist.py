"""The pre-deployment checklist: automatic checks, the form, and the flow resumed by a person."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from flows.checklist import (
    check_load_tested,
    check_monitoring_rendered,
    check_rollback_proven,
    checklist_form,
    default_paths,
    field_name,
    pre_deployment_checklist,
)
from phasegate.plan import RolloutPlan, load_plan
from phasegate.prove import plan_digest
from tasks.prefect_api import record_proof
from tests.fixtures.common import require_binary

SEED = Path(__file__).resolve().parents[2] / "deployments/plans/token-refresh-locking.yaml"


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(SEED)


def _answers(plan: RolloutPlan, value: bool = True, **overrides: bool) -> dict[str, object]:
    assert plan.checklist is not None
    answers: dict[str, object] = {field_name(item, i): value for i, item in enumerate(plan.checklist.items)}
    answers.update(overrides)
    answers["confirmed_by"] = "bob"
    return answers


def test_seed_checklist_form_has_a_bool_per_item_and_requires_confirmed_by(plan: RolloutPlan) -> None:
    form = checklist_form(plan)
    assert len(form.model_fields) == 8
    assert form.model_fields["item_1_all_unit_tests_passing"].title == "All unit tests passing"
    assert form.model_fields["confirmed_by"].is_required()


def test_seed_plan_load_check_covers_1000_concurrent_requests(plan: RolloutPlan) -> None:
    ok, why = check_load_tested(plan)
    assert ok and "1000 requests" in why


def test_a_load_check_below_1000_requests_does_not_count(plan: RolloutPlan) -> None:
    staging = plan.phases[0]
    small = [c.model_copy(update={"requests": 100}) for c in staging.checks]
    smaller = plan.model_copy(update={"phases": [staging.model_copy(update={"checks": small}), *plan.phases[1:]]})
    assert check_load_tested(smaller)[0] is False


def _record_proof(plan: RolloutPlan, digest: str, matched: bool = True) -> None:
    """What `rehearse --prove` records on the Prefect API in force (phasegate.entry.prove)."""
    record_proof(plan.name, "# proof", {"plan_name": plan.name, "sha256": digest, "at": "2026-12-02T17:00:00+00:00",
                                        "matched": matched, "cases": 28, "failed": [] if matched else ["healthy"]})


@pytest.mark.usefixtures("prefect_api")
def test_rollback_tested_needs_a_proof_of_this_plans_exact_content_that_matched(plan: RolloutPlan) -> None:
    never = plan.model_copy(update={"name": "never-proven"})
    ok, why = check_rollback_proven(never, SEED)
    assert not ok and "no proof of never-proven" in why and f"phasegate rehearse {SEED} --prove" in why

    _record_proof(plan, "0" * 64)
    ok, why = check_rollback_proven(plan, SEED)
    assert not ok and "another version of the plan" in why

    _record_proof(plan, plan_digest(SEED), matched=False)
    ok, why = check_rollback_proven(plan, SEED)
    assert not ok and "did not match (healthy)" in why

    _record_proof(plan, plan_digest(SEED))
    ok, why = check_rollback_proven(plan, SEED)
    assert ok and why.startswith("proven 2026-12-02T17:00:00+00:00: 28 rehearsals")


def test_checked_in_rules_and_dashboard_count_as_monitoring_created(plan: RolloutPlan) -> None:
    require_binary("promtool")
    ok, why = check_monitoring_rendered.fn(plan, *default_paths(plan, SEED))
    assert ok, why


def test_stale_rules_do_not_count_as_monitoring_created(plan: RolloutPlan, tmp_path: Path) -> None:
    rules, dashboard = default_paths(plan, SEED)
    stale = tmp_path / "rules.yaml"
    stale.write_text(rules.read_text().replace("> 0.01", "> 0.5"))
    ok, why = check_monitoring_rendered.fn(plan, stale, dashboard)
    assert not ok and "out of date" in why


def _resume_paused(run_input: dict[str, object]) -> threading.Thread:
    def resume() -> None:
        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        with get_client(sync_client=True) as client:
            for _ in range(300):
                for run in client.read_flow_runs(flow_run_filter=paused):
                    if run.name and run.parameters.get("plan_path") == str(SEED):
                        resume_flow_run(run.id, run_input=run_input)
                        return
                time.sleep(0.1)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("prefect_api")
def test_checklist_passes_when_every_item_is_confirmed(plan: RolloutPlan) -> None:
    require_binary("promtool")
    _record_proof(plan, plan_digest(SEED))
    resumer = _resume_paused(_answers(plan))
    assert pre_deployment_checklist(str(SEED), poll_interval_seconds=1) is True
    resumer.join(5)


@pytest.mark.usefixtures("prefect_api")
def test_checklist_fails_when_a_person_leaves_an_item_unconfirmed(plan: RolloutPlan) -> None:
    resumer = _resume_paused(_answers(plan, item_4_code_review_approved_by_2_team_members=False))
    assert pre_deployment_checklist(str(SEED), poll_interval_seconds=1) is False
    resumer.join(5)


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_automatic_check_outweighs_a_ticked_box(plan: RolloutPlan, tmp_path: Path) -> None:
    resumer = _resume_paused(_answers(plan))
    missing = str(tmp_path / "no-rules.yaml")
    assert pre_deployment_checklist(str(SEED), rules_path=missing, poll_interval_seconds=1) is False
    resumer.join(5)
