"""The seed's rollout, end to end: the real flow on a real Prefect API, against the
Kubernetes emulator, the synthetic app and a real Prometheus, with injected faults.

Each test builds a fresh world and inspects the cluster afterwards: the rollback must undo
what it should and touch nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.gates import pods_regex
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
SPEED = 172800.0  # two plan days per wall second

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def template(w, name):
    d = w.emulator.store.find("apps/deployments", "bodhi", name)
    return None if d is None else d["spec"]["template"]


def image_of(w, name="bodhi-server"):
    t = template(w, name)
    return next(c["image"] for c in t["spec"]["containers"] if c["name"] == "bodhi-server")


def final_state(report):
    """What the Runs list shows of the rollout's flow run: state type, state name, tags."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(report["flow_run_id"]))
    assert flow_run.state is not None
    return flow_run.state.type.value, flow_run.state.name, set(flow_run.tags)


@pytest.fixture
def run():
    """Run a rehearsal and hand back (report, world) with the world still up for inspection."""
    stack = []

    def _run(scenario, plan=TWO_PHASE, approve="auto", speed=SPEED, **kw):
        notifier = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - closed at teardown
        ctx = world(load_plan(plan), scenario=scenario, speed=speed, notifier=notifier)
        w = ctx.__enter__()
        stack.append(ctx)
        before = {"stable_template": template(w, "bodhi-server"), "stable_image": image_of(w)}
        report = run_in(w, plan, approve=approve, **kw)
        return report, w, before

    yield _run
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def approval_artifacts(report):
    """The approval artifacts of the rollout's flow run, as the Prefect server holds them: key → markdown."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(report["flow_run_id"])]),
            type=ArtifactFilterType(any_=["markdown"])))
    return {a.key: str(a.data) for a in artifacts if a.key and a.key.endswith("-approval")}


def test_healthy_seed_plan_is_promoted_through_every_phase_with_four_approvals(run):
    report, w, _before = run("healthy", plan=SEED)
    assert report["outcome"] == "promoted", [(p["name"], p["reason"]) for p in report["phases"]]
    assert final_state(report) == (
        "COMPLETED", "Promoted", {"plan:token-refresh-locking", "target:bodhi/bodhi-server", "outcome:promoted"})
    assert [p["name"] for p in report["phases"]] == ["staging", "canary-10pct", "canary-50pct", "full"]
    # One before each next phase, and one before promotion: `full`'s own criteria are attested.
    assert [(a["phase"], a["decision"]) for a in report["approvals"]] == [
        ("staging", "approve"), ("canary-10pct", "approve"), ("canary-50pct", "approve"), ("full", "approve")]
    full = load_plan(SEED).phase("full")
    assert report["approvals"][-1]["criteria"] == {c: True for c in full.manual_criteria}
    # Each decision is an artifact on the run: who, what, why, what was attested, which account.
    artifacts = approval_artifacts(report)
    assert len(artifacts) == 4, sorted(artifacts)
    (last,) = [md for key, md in artifacts.items() if key.endswith("-full-approval")]
    assert "**Decision:** approve" in last and "**Decided by:** rehearsal" in last
    assert "**Comment:** rehearsal: approve" in last
    assert "**Prefect account that sent it:** none recorded" in last
    assert all(f"- ✅ {c}" in last for c in full.manual_criteria)
    assert image_of(w) == w.image
    assert template(w, "bodhi-server-canary") is None
    annotations = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["metadata"]["annotations"]
    assert annotations["phasegate.dev/phase-state"] == "promoted"
    assert "phasegate.dev/promoted-at" in annotations
    assert annotations["phasegate.dev/checklist-confirmed"].endswith(" by rehearsal")
    staging = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")
    assert any(c["image"] == w.image for c in staging["spec"]["template"]["spec"]["containers"])


def test_token_not_active_error_in_canary_rolls_back_canary_only(run):
    report, w, before = run("token-not-active")
    assert report["outcome"] == "rolled_back"
    # Failed-type, so the Runs list shows it red, apart from a promoted run.
    assert final_state(report) == (
        "FAILED", "Rolled back", {"plan:two-phase", "target:bodhi/bodhi-server", "outcome:rolled_back"})
    rb = report["rollback"]
    assert (rb["strategy"], rb["phase"], rb["gates"]) == ("canary_only", "canary-10pct", ["token-not-active"])
    assert rb["ok"] and rb["cluster_verified"]
    assert template(w, "bodhi-server-canary") is None
    assert template(w, "bodhi-server") == before["stable_template"]  # stable untouched
    stable = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
    assert stable["spec"]["replicas"] == 10


@pytest.mark.parametrize(
    ("scenario", "gate"),
    [("latency-regression", "p99-latency-increase"), ("error-rate", "error-rate-increase"),
     ("lock-timeouts", "lock-timeout-rate")],
)
def test_each_canary_trigger_rolls_back_the_canary_only(run, scenario, gate):
    # 8 plan hours per wall second: at two days per second the 48 h canary lasted about a
    # second of wall, and once on a busy runner the lock-timeout trigger fired only in `full`.
    report, w, before = run(scenario, speed=28800.0)
    assert report["outcome"] == "rolled_back"
    assert report["rollback"]["strategy"] == "canary_only"
    assert gate in report["rollback"]["gates"]
    assert template(w, "bodhi-server") == before["stable_template"]


def test_rejected_approval_rolls_back_with_the_phase_rollback(run):
    report, w, _before = run("healthy", approve="reject@canary-10pct")
    assert report["outcome"] == "rolled_back"
    assert report["approvals"][0]["decision"] == "reject"
    (rejected,) = approval_artifacts(report).values()
    assert "# canary-10pct: reject" in rejected and "**Decided by:** rehearsal" in rejected
    assert report["rollback"]["strategy"] == "canary_only"
    assert "rejected by rehearsal" in report["rollback"]["reason"]
    assert template(w, "bodhi-server-canary") is None


def test_approval_timeout_halts_and_leaves_the_canary_for_a_person(run):
    report, w, _before = run("healthy", approve="timeout@canary-10pct")
    assert report["outcome"] == "halted"
    # Failed-type, not Paused: the run has ended; a person acts on the release, not on this run.
    assert final_state(report) == (
        "FAILED", "Halted", {"plan:two-phase", "target:bodhi/bodhi-server", "outcome:halted"})
    assert report["approvals"][0]["decision"] == "timeout"
    assert template(w, "bodhi-server-canary") is not None  # halt: nothing is undone behind the team's back


def test_marginal_latency_under_the_trigger_holds_for_a_human_and_never_advances(run):
    report, w, before = run("latency-marginal")
    assert report["outcome"] == "halted"
    canary = report["phases"][0]
    assert canary["outcome"] == "hold"
    assert "latency-within-range" in canary["reason"]
    assert report["rollback"] is None
    assert image_of(w) == before["stable_image"]


def test_bad_image_hits_the_progress_deadline_and_rolls_back(run):
    report, w, before = run("bad-image")
    assert report["outcome"] == "rolled_back"
    assert "progress deadline" in report["phases"][0]["reason"]
    assert template(w, "bodhi-server-canary") is None
    assert template(w, "bodhi-server") == before["stable_template"]


def test_prometheus_down_mid_soak_is_never_promoted(run):
    report, w, before = run("prometheus-outage")
    assert report["outcome"] != "promoted"
    assert ("stopped" in [e for e, _ in report["timings"]["outages"]])
    assert image_of(w) == before["stable_image"]


def test_lock_timeouts_at_full_rollout_flip_the_feature_flag_without_restarting_pods(run):
    report, w, _before = run(str(ROOT / "tests/plans/scenarios/lock-timeouts-at-full.yaml"))
    assert report["outcome"] == "rolled_back"
    rb = report["rollback"]
    assert (rb["strategy"], rb["phase"]) == ("feature_flag", "full")
    assert rb["ok"] and rb["metrics_recovered"] is not False
    # Switched off, the locking code reports no timeouts at all any more.
    timeouts = f'sum(increase(token_refresh_lock_timeouts_total{{namespace="bodhi",pod=~"{pods_regex("bodhi-server")}"}}[2s]))'
    assert w.prometheus.provider().query(timeouts) == 0
    config = w.emulator.store.get("configmaps", "bodhi", "bodhi-config")
    assert config["data"]["enable_token_refresh_locking"] == "false"
    env = {e["name"]: e["value"] for e in template(w, "bodhi-server")["spec"]["containers"][0]["env"]}
    assert env["ENABLE_TOKEN_REFRESH_LOCKING"] == "true"  # the ConfigMap switch needs no pod restart
