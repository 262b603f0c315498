"""The review and sign-off flows end to end: Prefect's test harness, a real Prometheus holding
four weeks of backfilled history, and reports, artifacts, notifications and annotations checked.
The Prefect API is the session's (``prefect_api`` in tests/fixtures/prefect.py).

History (5-minute resolution, from a day before promotion to four weeks after) is written
in two namespaces: ``clean`` (healthy throughout) and ``incident`` (token_not_active errors
all through day 3). Each test gets the seed plan pointed at one of them.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run

from flows.review import review_releases, sign_off
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.clock import RealClock
from phasegate.notify import Kind
from phasegate.record import ANN_IMAGE, ANN_PLAN, ANN_PROMOTED_AT, ANN_SIGNED_OFF
from phasegate.rehearsal.cluster import SEED_HISTORY, SEED_IMAGE_REPO, ClusterEmulator, seed
from phasegate.rehearsal.prometheus import BackfillSample, PrometheusServer
from phasegate.runctx import RunContext, use
from tests.fixtures.common import require_binary

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"
DAY, STEP = 86400.0, 300.0
DEPLOYMENT = "bodhi-server"
BAD_DAY = 2  # 0-based: the third day after promotion
RELEASED = f"{SEED_IMAGE_REPO}:{SEED_HISTORY[-1]}"  # what the seeded Deployments run


def _history(promoted: float) -> list[BackfillSample]:
    samples: list[BackfillSample] = []
    start = promoted - DAY
    steps = int((29 * DAY + 2 * 3600) / STEP)
    for namespace in ("clean", "incident"):
        # Labelled as a ServiceMonitor labels a scraped pod: no deployment or track label.
        base = (("namespace", namespace), ("pod", f"{DEPLOYMENT}-5f6d8b9c7d-4xj2p"), ("container", DEPLOYMENT),
                ("service", DEPLOYMENT), ("job", DEPLOYMENT))

        def counter(
            metric: str,
            extra: tuple[tuple[str, str], ...],
            per_step: Callable[[float], float],
            base: tuple[tuple[str, str], ...] = base,
        ) -> None:
            total = 0.0
            for i in range(steps + 1):
                t = start + i * STEP
                samples.append(BackfillSample(metric, base + extra, t, total))
                total += per_step(t)

        def token_errors(t: float, bad: bool = namespace == "incident") -> float:
            return 1.0 if bad and promoted + BAD_DAY * DAY <= t < promoted + (BAD_DAY + 1) * DAY else 0.0

        counter("token_refresh_errors_total", (("type", "token_not_active"),), token_errors)
        counter("http_requests_total", (("code", "200"),), lambda t: 3000)
        counter("concurrency_lock_acquisitions_total", (), lambda t: 10000)
        counter("token_refresh_lock_timeouts_total", (), lambda t: 1)  # 0.9999 success
        for le, n in (("5", 9000), ("25", 9900), ("100", 10000), ("+Inf", 10000)):
            counter("token_refresh_lock_acquisition_duration_ms_bucket", (("le", le),), lambda t, n=n: n)
        for le, n in (("50", 2900), ("100", 2990), ("250", 3000), ("+Inf", 3000)):
            counter("api_response_time_ms_bucket", (("le", le),), lambda t, n=n: n)
    return samples


@pytest.fixture(scope="module")
def promoted_at() -> float:
    # Four weeks and a bit ago, so sign-off is due now and all history is inside retention.
    return float(int((time.time() - 28 * DAY - 3 * 3600) // STEP * STEP))


@pytest.fixture(scope="module")
def history_prometheus(promoted_at: float) -> Iterator[PrometheusServer]:
    server = PrometheusServer(binary=require_binary("prometheus"), promtool=require_binary("promtool"))
    try:
        server.backfill(_history(promoted_at), max_block_duration="720h")
        server.start()
        yield server
    finally:
        server.close()


def _plan_for(namespace: str, tmp_path: Path) -> str:
    path = tmp_path / f"plan-{namespace}.yaml"
    path.write_text(SEED.read_text().replace("production: bodhi\n", f"production: {namespace}\n"))
    return str(path)


@pytest.fixture
def emulator() -> Iterator[ClusterEmulator]:
    """Two promoted releases, as the rollout leaves them: annotations on the Deployments."""
    with ClusterEmulator(ready_delay=0.02) as cluster:
        seed(cluster, namespaces=("clean", "incident"), deployment=DEPLOYMENT, container=DEPLOYMENT)
        yield cluster


def annotations(emulator: ClusterEmulator, namespace: str) -> dict[str, str]:
    return emulator.store.get("apps/deployments", namespace, DEPLOYMENT)["metadata"].get("annotations") or {}


@pytest.fixture
def world(history_prometheus: PrometheusServer, promoted_at: float, prefect_api: None, emulator: ClusterEmulator):
    cluster = KubernetesCluster.from_url(emulator.url, poll_interval=0.02)
    for namespace in ("clean", "incident"):
        cluster.annotate(
            namespace,
            DEPLOYMENT,
            {ANN_PROMOTED_AT: f"{promoted_at:.3f}", ANN_IMAGE: RELEASED, ANN_PLAN: "token-refresh-locking"},
        )
    provider = history_prometheus.provider(timeout=10)
    notifier = ConsoleNotifier(file=io.StringIO())
    ctx = RunContext(cluster=cluster, metrics=provider, notifier=notifier, clock=RealClock())
    with use(ctx):
        yield ctx
    provider.close()
    cluster.close()


def test_a_clean_week_gets_daily_reviews_and_a_weekly_summary_with_charts(
    world: RunContext, promoted_at: float, tmp_path: Path
) -> None:
    plan = _plan_for("clean", tmp_path)
    reports = tmp_path / "reports"
    daily = [
        entry
        for day in range(1, 8)
        for entry in review_releases(plan, "daily", now=promoted_at + day * DAY + 3600, reports_dir=str(reports))
    ]
    assert [e["review"] for e in daily] == [f"daily review {d}/7" for d in range(1, 8)]
    assert {e["outcome"] for e in daily} == {"Successful"}

    summary = review_releases(plan, "weekly-summary", now=promoted_at + 7 * DAY + 3600, reports_dir=str(reports))
    assert [(e["review"], e["outcome"]) for e in summary] == [("weekly-summary review 1/1", "Successful")]
    assert "(0/7 days failed)" in Path(summary[0]["report"]).read_text()
    assert len(summary[0]["charts"]) == 4
    assert all(Path(c).stat().st_size > 10_000 for c in summary[0]["charts"])

    sent = world.notifier.sent  # type: ignore[attr-defined]
    assert [n.kind for n in sent] == [Kind.REVIEW] * 8


def test_nothing_is_reviewed_daily_after_week_one(world: RunContext, promoted_at: float, tmp_path: Path) -> None:
    assert review_releases(_plan_for("clean", tmp_path), "daily", now=promoted_at + 9 * DAY) == []


def test_a_day_with_token_not_active_errors_fails_that_days_review(
    world: RunContext, promoted_at: float, tmp_path: Path
) -> None:
    plan = _plan_for("incident", tmp_path)
    reports = str(tmp_path / "reports")
    outcomes = {
        day: review_releases(plan, "daily", now=promoted_at + day * DAY + 3600, reports_dir=reports)[0]["outcome"]
        for day in (2, 3, 4)
    }
    assert outcomes == {2: "Successful", 3: "Failed", 4: "Successful"}
    bad = world.notifier.sent[1]  # type: ignore[attr-defined]
    assert "did NOT pass" in bad.text and "zero-token-not-active: Failed" in bad.text


def test_signoff_refuses_after_a_day_with_token_not_active_errors(
    world: RunContext, emulator: ClusterEmulator, promoted_at: float, tmp_path: Path
) -> None:
    done = sign_off(_plan_for("incident", tmp_path), now=promoted_at + 28 * DAY + 3600, reports_dir=str(tmp_path))
    assert [d["signed_off"] for d in done] == [False]
    assert any(p.startswith("zero-token-not-active: Failed") for p in done[0]["problems"])
    notice = world.notifier.sent[-1]  # type: ignore[attr-defined]
    assert notice.kind is Kind.REVIEW and "TOKEN-REFRESH-001 stays open" in notice.text
    assert ANN_SIGNED_OFF not in annotations(emulator, "incident")


def _resume_when_paused(flow_run_id: str, run_input: dict[str, str]) -> threading.Thread:
    def resume() -> None:
        with get_client(sync_client=True) as client:
            for _ in range(300):
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_paused():
                    resume_flow_run(flow_run_id, run_input=run_input)
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


def test_four_clean_weeks_are_signed_off_and_the_incident_closed(
    world: RunContext, emulator: ClusterEmulator, promoted_at: float, tmp_path: Path
) -> None:
    paused: list[threading.Thread] = []
    answer = {"decision": "sign off", "confirmed_by": "alice", "lessons_learned": "Double-check made most locks idle."}
    asking = world.with_(on_pause=lambda run_id, _name, _fields, _why: paused.append(_resume_when_paused(run_id, answer)))

    with use(asking):
        done = sign_off(
            _plan_for("clean", tmp_path), now=promoted_at + 28 * DAY + 3600, reports_dir=str(tmp_path),
            poll_interval_seconds=1,
        )

    assert len(paused) == 1
    assert [(d["signed_off"], d["incident_closed"]) for d in done] == [(True, "TOKEN-REFRESH-001")]
    report = Path(done[0]["report"]).read_text()
    assert "**SUCCESS**" in report and "Incident **TOKEN-REFRESH-001** is closed." in report
    assert "- Confirmed by: alice" in report and "Double-check made most locks idle." in report
    notice = world.notifier.sent[-1]  # type: ignore[attr-defined]
    assert notice.kind is Kind.SIGNED_OFF and "TOKEN-REFRESH-001 closed" in notice.text
    assert ANN_SIGNED_OFF in annotations(emulator, "clean")

    again = sign_off(_plan_for("clean", tmp_path), now=promoted_at + 29 * DAY, reports_dir=str(tmp_path))
    assert again == []


def _put_back_the_old_image(emulator: ClusterEmulator, namespace: str) -> None:
    def revert(d: dict) -> dict:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = f"{SEED_IMAGE_REPO}:{SEED_HISTORY[-2]}"
        return d

    emulator.store.mutate("apps/deployments", namespace, DEPLOYMENT, revert, manager="argocd-controller")


def test_a_review_of_an_image_that_no_longer_runs_is_refused_not_measured(
    world: RunContext, emulator: ClusterEmulator, promoted_at: float, tmp_path: Path
) -> None:
    _put_back_the_old_image(emulator, "clean")
    done = review_releases(_plan_for("clean", tmp_path), "daily", now=promoted_at + 2 * DAY + 3600,
                           reports_dir=str(tmp_path / "reports"))
    assert [(d["review"], d["outcome"]) for d in done] == [("daily review 2/7", "refused")]
    assert f"runs {SEED_IMAGE_REPO}:{SEED_HISTORY[-2]}, not the promoted {RELEASED}" in done[0]["refused"]
    (notice,) = world.notifier.sent  # type: ignore[attr-defined]
    assert notice.kind is Kind.DRIFT and "refused" in notice.text
    assert not (tmp_path / "reports").exists()  # nothing measured, no report of the wrong image


def test_signoff_of_an_image_that_no_longer_runs_is_refused_and_the_incident_stays_open(
    world: RunContext, emulator: ClusterEmulator, promoted_at: float, tmp_path: Path
) -> None:
    _put_back_the_old_image(emulator, "clean")
    done = sign_off(_plan_for("clean", tmp_path), now=promoted_at + 28 * DAY + 3600, reports_dir=str(tmp_path))
    assert [d["signed_off"] for d in done] == [False]
    assert "not the promoted" in done[0]["problems"][0]
    assert ANN_SIGNED_OFF not in annotations(emulator, "clean")


def test_a_failed_review_pages_naming_the_gate_and_links_the_rollback_procedures(
    world: RunContext, promoted_at: float, tmp_path: Path
) -> None:
    from phasegate.entry.register import register
    from phasegate.notify import Severity

    ids = register(ROOT / "prefect.yaml", ["rollback-immediate", "rollback-canary", "rollback-feature-flag"])
    plan = _plan_for("incident", tmp_path)
    with use(world.with_(ui_url="http://127.0.0.1:4200")):
        (entry,) = review_releases(plan, "daily", now=promoted_at + 3 * DAY + 3600, reports_dir=str(tmp_path))
    assert entry["outcome"] == "Failed"
    page = world.notifier.sent[-1]  # type: ignore[attr-defined]
    assert page.severity is Severity.CRITICAL
    assert page.fields["Failed gate"] == "zero-token-not-active"
    assert [url for _, url in page.links] == [
        f"http://127.0.0.1:4200/deployments/deployment/{ids[name]}"
        for name in ("rollback-immediate", "rollback-canary", "rollback-feature-flag")
    ]
    assert "Immediate rollback (< 5 min)" in page.text
