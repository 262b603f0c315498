"""Drift: what the rollout left vs what runs, and who changed it — read like an incident."""

from __future__ import annotations

from dataclasses import replace

from phasegate.decide import Step, after_drift
from phasegate.drift import Drift, Expectation, expectation, field_owner, find_drift, observed_total, workload_owners
from phasegate.plan import Strategy
from phasegate.ports import TargetState, WorkloadState
from tests.core.builders import phase, seed_plan

OLD, NEW = "bodhi-server:1.5.0", "bodhi-server:1.6.0"
PLAN = seed_plan()
FLAG = "ENABLE_TOKEN_REFRESH_LOCKING"


def workload(name: str, image: str, replicas: int, **kw) -> WorkloadState:
    return WorkloadState(name=name, image=image, replicas=replicas, ready_replicas=replicas,
                         updated_replicas=replicas, available_replicas=replicas, revision=1, generation=1,
                         observed_generation=1, env=kw.pop("env", {FLAG: "true"}), **kw)


def canary_world(stable_image=OLD, canary_image=NEW, stable=9, canary=1, **kw) -> TargetState:
    return TargetState(workload("bodhi-server", stable_image, stable, **kw),
                       workload("bodhi-server-canary", canary_image, canary))


CANARY = expectation(PLAN, PLAN.phase("canary-10pct"), NEW, OLD, env={FLAG: "true"})
FULL = expectation(PLAN, PLAN.phase("full"), NEW, OLD)


def test_the_world_as_the_canary_phase_left_it_has_no_drift():
    assert find_drift(CANARY, canary_world()) == []


def test_argo_cd_putting_the_old_image_back_during_full_is_drift_naming_argo():
    state = TargetState(workload("bodhi-server", OLD, 10, managers={"image": "argocd-controller"}), None)
    assert find_drift(FULL, state) == [Drift("bodhi-server image", NEW, OLD, "argocd-controller")]


def test_a_deleted_canary_is_drift():
    (d,) = find_drift(CANARY, TargetState(workload("bodhi-server", OLD, 10), None))
    assert (d.what, d.found) == ("canary", "deleted")


def test_a_canary_left_behind_at_full_is_drift():
    (d,) = find_drift(FULL, canary_world(stable_image=NEW, stable=10, canary=1))
    assert d.what == "canary" and NEW in d.found


def test_a_manual_scale_that_keeps_the_share_is_respected_and_its_total_adopted():
    state = canary_world(stable=18, canary=2)
    assert find_drift(CANARY, state) == []
    assert observed_total(state) == 20


def test_a_canary_scaled_up_past_the_tolerance_is_drift_naming_kubectl():
    state = TargetState(workload("bodhi-server", OLD, 9),
                        workload("bodhi-server-canary", NEW, 5, managers={"replicas": "kubectl"}))
    (d,) = find_drift(CANARY, state)
    assert (d.what, d.changed_by) == ("replica split", "kubectl")
    assert "5 canary + 9 stable = 35.7%" in d.found


def test_stable_scaled_to_zero_beside_a_canary_is_drift():
    (d,) = find_drift(CANARY, canary_world(stable=0, canary=1))
    assert d.what == "replica split" and "stable serving" in d.expected


def test_a_flag_turned_off_by_hand_is_drift_on_every_workload_and_the_configmap():
    expected = replace(CANARY, configmap={"enable_token_refresh_locking": "true"})
    state = canary_world(env={FLAG: "false"})
    found = find_drift(expected, state, {"enable_token_refresh_locking": "false"},
                       {"enable_token_refresh_locking": "kubectl-patch"})
    assert [d.what for d in found] == ["bodhi-server env ENABLE_TOKEN_REFRESH_LOCKING",
                                       "ConfigMap key enable_token_refresh_locking"]
    assert found[1].changed_by == "kubectl-patch"


def test_phasegate_owning_the_field_is_not_named_as_the_culprit():
    state = TargetState(workload("bodhi-server", OLD, 10, managers={"image": "phasegate"}), None)
    assert find_drift(FULL, state)[0].changed_by is None


def test_drift_halts_for_a_person_unless_the_plan_says_roll_back():
    drifts = [Drift("bodhi-server image", NEW, OLD, "argocd-controller")]
    halted = after_drift(phase(), drifts)
    assert halted.step is Step.HALT and "argocd-controller" in halted.reason
    rolled = after_drift(phase(on_drift="rollback"), drifts)
    assert (rolled.step, rolled.strategy) == (Step.ROLLBACK, Strategy.CANARY_ONLY)
    assert after_drift(phase(), []).step is Step.CONTINUE


MANAGED = [
    {"manager": "kubectl-client-side-apply", "operation": "Update", "time": "2026-01-01T00:00:00Z",
     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
         'k:{"name":"app"}': {".": {}, "f:name": {}, "f:env": {'k:{"name":"A"}': {".": {}, "f:value": {}}}}}}}}}},
    {"manager": "kubectl-set", "operation": "Update", "time": "2026-01-02T00:00:00Z", "fieldsType": "FieldsV1",
     "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"app"}': {"f:image": {}}}}}}}},
    {"manager": "kubectl", "operation": "Update", "subresource": "scale", "time": "2026-01-03T00:00:00Z",
     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
]


def test_field_owner_reads_fieldsv1_trees_as_the_api_server_writes_them():
    assert workload_owners(MANAGED, "app", ["A", "B"]) == {
        "image": "kubectl-set", "replicas": "kubectl", "env/A": "kubectl-client-side-apply"}
    assert field_owner(MANAGED, ("f:metadata", "f:labels")) is None
    assert field_owner(None, ("f:spec",)) is None


def test_expectation_follows_the_phase():
    staging = expectation(PLAN, PLAN.phase("staging"), NEW, OLD)
    assert (staging.stable_image, staging.canary_image) == (NEW, None)
    assert (CANARY.stable_image, CANARY.canary_image, CANARY.canary_share) == (OLD, NEW, 10)
    assert (FULL.stable_image, FULL.canary_image) == (NEW, None)
    assert isinstance(CANARY, Expectation)


def test_stable_autoscaler_stopped_by_a_second_one_on_the_canary_pods_is_drift():
    from phasegate.ports import AutoscalerState

    stopped = AutoscalerState("bodhi-server", 4, 36, 9, original_bounds=(4, 40), scaling_stopped=(
        "AmbiguousSelector: pods by selector app=bodhi-server are controlled by multiple HPAs: "
        "[bodhi/bodhi-server bodhi/keda-hpa-bodhi-server-canary]"))
    state = replace(canary_world(), autoscaler=stopped)
    (d,) = find_drift(CANARY, state)
    assert d.what == "HPA bodhi-server" and d.expected == "scaling" and "keda-hpa" in d.found
    assert after_drift(PLAN.phase("canary-10pct"), [d]).step is not Step.CONTINUE
    assert find_drift(CANARY, replace(state, autoscaler=replace(stopped, scaling_stopped=None))) == []
    # Once the canary is gone (full), nothing picks stable's pods twice: not a canary finding.
    assert find_drift(FULL, TargetState(workload("bodhi-server", NEW, 10), None, stopped)) == []
