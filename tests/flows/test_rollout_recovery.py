"""One target, one rollout at a time — and a rollout survives the death of its process.

The crash test hosts the world (emulator, app, Prometheus) in the test process and runs
the flow in a child process that it SIGKILLs — mid-soak in each kind of phase, or while the
run waits for approval — as a node failure would kill a worker pod while the cluster and
its annotations stay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

from flows.rollout import RolloutRefused
from phasegate import approval_form, runctx
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import Approver, world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
THREE_PHASE = ROOT / "tests/plans/three-phase.yaml"
SPEED = 172800.0

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def quiet() -> ConsoleNotifier:
    return ConsoleNotifier(file=open(os.devnull, "w"))


def annotations(w) -> dict[str, str]:
    return w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["metadata"].get("annotations") or {}


def test_second_rollout_of_the_same_target_is_refused_while_the_first_holds_the_lock():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=quiet()) as w:
        first: dict = {}
        # "ui" answers nothing: the first rollout sits in its approval pause, holding the lock.
        thread = threading.Thread(
            target=lambda: first.update(run_in(w, TWO_PHASE, approve=Approver("ui", say=lambda _: None),
                                               approval_floor=12.0)),
        )
        thread.start()
        deadline = time.time() + 60
        while annotations(w).get("phasegate.dev/phase-state") not in ("passed", "held") and time.time() < deadline:
            time.sleep(0.2)
        assert annotations(w).get("phasegate.dev/phase-state") in ("passed", "held")
        w.image = w.image.replace("1.6.0", "1.7.0")
        # The runtime is per process: the second run must install one the first can share —
        # no approver that would answer the first run's pause, the same approval window.
        with pytest.raises(RolloutRefused, match="another rollout of bodhi/bodhi-server is in progress"):
            run_in(w, TWO_PHASE, approve=Approver("ui", say=lambda _: None), approval_floor=12.0,
                   lock_timeout_seconds=2.0)
        thread.join(timeout=120)
        assert first["outcome"] == "halted", (first["approvals"], [(p["name"], p["outcome"]) for p in first["phases"]])


def test_rollout_is_refused_while_another_rollouts_record_is_unfinished():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=quiet()) as w:
        w.emulator.store.mutate("apps/deployments", "bodhi", "bodhi-server", lambda d: (
            d["metadata"].setdefault("annotations", {}).update({
                "phasegate.dev/rollout-id": "two-phase:registry.example.com/bodhi/bodhi-server:9.9.9",
                "phasegate.dev/phase": "canary-10pct", "phasegate.dev/phase-state": "soaking",
            }) or d))
        with pytest.raises(RolloutRefused, match="in the middle of rollout"):
            run_in(w, TWO_PHASE)
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start crash workers; any still running when the test ends (a failed assertion) is killed."""
    workers: list[subprocess.Popen[str]] = []

    def _spawn(w, plan: Path, *extra: str) -> subprocess.Popen[str]:
        workers.append(_worker(w, plan, *extra))
        return workers[-1]

    yield _spawn
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)


def _worker(w, plan: Path, *extra: str) -> subprocess.Popen[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/flows/crash_worker.py"), "--emulator", w.emulator.url,
         "--prometheus", w.prometheus.url, "--plan", str(plan), "--image", w.image,
         "--speed", str(SPEED), "--epoch", str(w.clock.epoch), "--checks-port", str(w.checks.port), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _deployment_creations(w) -> int:
    """POSTs of Deployments: in a whole rollout only the canary is ever created."""
    return sum(1 for r in w.emulator.requests if r.method == "POST" and r.path.endswith("/deployments"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _flow_run_state(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


def _wait_for_pause(pauses: Path, worker: subprocess.Popen[str], deadline: float) -> str:
    """The flow run id of the worker's approval pause, once Prefect has it Paused."""
    while time.time() < deadline:
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        ids = _lines(pauses)
        if ids and (state := _flow_run_state(ids[-1])) is not None and state.is_paused():
            return ids[-1]
        time.sleep(0.1)
    raise AssertionError(f"no approval pause within the deadline (pauses: {_lines(pauses)})")


def _canary_replicas(w) -> int | None:
    canary = w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary")
    return None if canary is None else canary["spec"]["replicas"]


def _notifications(events: list[dict]) -> list[tuple[str, str | None]]:
    return [(e["kind"], e.get("phase")) for e in events if e["event"] == "notification"]


def _expected_notifications(plan_path: Path) -> set[tuple[str, str | None]]:
    """What one healthy rollout of the plan tells people: each exactly once."""
    plan = load_plan(plan_path)
    expected = {("rollout_started", None), ("promoted", None)}
    for i, phase in enumerate(plan.phases):
        expected |= {("phase_started", phase.name), ("phase_passed", phase.name)}
        # Before the next phase; after the last one only to attest its criteria, before promotion.
        if phase.approval.required and (i + 1 < len(plan.phases) or phase.manual_criteria):
            expected |= {("approval_needed", phase.name), ("approval_given", phase.name)}
    return expected


# Where the flow process dies: (plan, phase, state). "paused" is the approval pause after the
# phase passed, with the flow run Paused in Prefect waiting for a person.
KILL_POINTS = [
    pytest.param(THREE_PHASE, "staging", "soaking", id="staging-mid-soak"),
    pytest.param(TWO_PHASE, "canary-10pct", "soaking", id="canary-mid-soak"),
    pytest.param(TWO_PHASE, "canary-10pct", "paused", id="approval-pause"),
    pytest.param(TWO_PHASE, "full", "soaking", id="full-mid-soak"),
]


@pytest.mark.parametrize(("plan", "phase", "where"), KILL_POINTS)
def test_flow_killed_in_each_phase_resumes_without_redeploying_or_renotifying(tmp_path, spawn, plan, phase, where):
    """SIGKILL the flow process in ``phase``, restart it with --take-over: it ends promoted,
    every phase deployed exactly once across both processes, the canary created once, and
    every notification sent exactly once across both processes (bar the approval question a
    run restarted in the pause must ask again)."""
    at_pause = where == "paused"
    # An unanswered pause must outlast the test's own steps, however slow the machine.
    manual = ["--approve", "ui", "--approval-floor", "60"] if at_pause else []
    order = [p.name for p in load_plan(plan).phases]
    with world(load_plan(plan), speed=SPEED, notifier=quiet()) as w:
        events, pauses = tmp_path / "first-events.jsonl", tmp_path / "first-pauses"
        first = spawn(w, plan, "--events", str(events), "--pauses", str(pauses), *manual)
        deadline = time.time() + 90
        want_state = "passed" if at_pause else "soaking"
        while time.time() < deadline and not (
            annotations(w).get("phasegate.dev/phase") == phase
            and annotations(w).get("phasegate.dev/phase-state") == want_state
        ):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.05)
        where_now = (annotations(w).get("phasegate.dev/phase"), annotations(w).get("phasegate.dev/phase-state"))
        assert where_now == (phase, want_state)
        dead_run = _wait_for_pause(pauses, first, deadline) if at_pause else None
        first_run = annotations(w)["phasegate.dev/flow-run"]  # recorded on the cluster, as the rest
        assert dead_run in (None, first_run)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        first_events = [json.loads(line) for line in _lines(events)]
        first_sent = _notifications(first_events)
        first_deployed = [e["phase"] for e in first_events if e["event"] == "deployed"]
        assert first_deployed == order[: order.index(phase) + 1]
        assert _deployment_creations(w) == (0 if phase == "staging" else 1)
        notified_before = json.loads(annotations(w)["phasegate.dev/notified"])
        assert f"{phase}:started" in notified_before
        assert len(notified_before) == len(first_sent)  # the annotation records each one sent

        events2, pauses2 = tmp_path / "second-events.jsonl", tmp_path / "second-pauses"
        second = spawn(w, plan, "--take-over", "--events", str(events2), "--pauses", str(pauses2), *manual)
        answer = None
        if at_pause:
            # Restarted, it asks again in its own flow run, and waits: nothing advances or is redeployed.
            run = _wait_for_pause(pauses2, second, time.time() + 90)
            assert run != dead_run
            canary_before = _canary_replicas(w)
            assert canary_before == 1
            # Nobody reported the kill, so Prefect still showed the dead run's pause with its
            # form. The new run closed it: an approval given there is refused, not lost quietly.
            from prefect.exceptions import NotPausedError
            from prefect.flow_runs import resume_flow_run

            dead_state = _flow_run_state(dead_run)
            assert dead_state.is_crashed() and run in (dead_state.message or ""), dead_state
            valid = approval_form.answer("approve", "", "", [True])
            with pytest.raises(NotPausedError):
                resume_flow_run(UUID(dead_run), run_input={**valid, "approver": "bob-on-the-dead-run"})
            watch_until = time.time() + 3  # three of the new run's 1 s pause polls
            while time.time() < watch_until:
                assert _flow_run_state(run).is_paused()
                assert annotations(w)["phasegate.dev/phase-state"] == "passed"
                assert _canary_replicas(w) == canary_before
                time.sleep(0.2)
            answer = {**valid, "approver": "alice", "comment": "asked again after the restart"}
            resume_flow_run(UUID(run), run_input=answer)

        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["outcome"] == "promoted", [(p["name"], p["reason"]) for p in report["phases"]]
        assert report["resumed"] is True
        assert [p["name"] for p in report["phases"]] == order[order.index(phase) + int(at_pause) :]
        # Prefect no longer shows the killed run as running or waiting: the successor closed it.
        assert _flow_run_state(first_run).is_crashed()
        assert annotations(w)["phasegate.dev/flow-run"] == report["flow_run_id"] != first_run

        # Nothing deployed twice, nothing left undeployed.
        second_deployed = [e["phase"] for e in report["events"] if e["event"] == "deployed"]
        assert first_deployed + second_deployed == order
        assert _deployment_creations(w) == 1
        assert _canary_replicas(w) is None

        # Nothing said twice, nothing left unsaid — except that a run restarted in the pause
        # asks again, once, in its own run: the first question links to the dead one.
        second_sent = _notifications(report["events"])
        asked_again = [("approval_needed", phase)] if at_pause else []
        assert sorted(set(first_sent) & set(second_sent)) == asked_again
        assert sorted(first_sent + second_sent) == sorted([*_expected_notifications(plan), *asked_again])
        notified = json.loads(annotations(w)["phasegate.dev/notified"])
        assert len(notified) == len(set(notified)) == len(first_sent) + len(second_sent)

        if at_pause:
            approvals = [(a["phase"], a["decision"], a["approver"], a["comment"]) for a in report["approvals"]]
            assert approvals == [(phase, "approve", "alice", answer["comment"])]
            assert f"{phase}:approval-needed:{run}" in notified
            again = next(e for e in report["events"] if e["event"] == "notification" and e["kind"] == "approval_needed")
            assert "restarted run" in again["text"]


def test_rollout_refuses_to_start_until_the_pre_deployment_checklist_is_confirmed():
    from flows.rollout import PreflightFailed, progressive_rollout

    seed_plan = ROOT / "deployments/plans/token-refresh-locking.yaml"
    with world(load_plan(seed_plan), speed=SPEED, notifier=quiet()) as w:
        staging_before = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")["spec"]
        with runctx.use(w.run_context(approval_floor=5.0, on_pause=None)), pytest.raises(
            PreflightFailed, match="pre-deployment checklist is not confirmed"
        ):
            progressive_rollout(str(seed_plan), w.image)
        assert w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")["spec"] == staging_before
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None


def test_api_server_storm_across_a_whole_rollout_converges_with_one_canary_and_stable_never_at_zero():
    """A fifth of requests answer 500, a fifth of writes 409, some are slow: the rollout
    still promotes, creates exactly one canary, and stable never drops to zero replicas."""
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=quiet()) as w:
        stable_replicas: list[int] = []
        canary_uids: set[str] = set()
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                d = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")
                stable_replicas.append(d["spec"]["replicas"])
                canary = w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary")
                if canary is not None:
                    canary_uids.add(canary["metadata"]["uid"])
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        w.emulator.faults.set(error_500=0.2, conflict_409=0.2, slow=0.05, slow_seconds=0.3, seed=7)
        try:
            report = run_in(w, TWO_PHASE)
        finally:
            w.emulator.faults.clear()
            watching.set()
            watcher.join()
        assert report["outcome"] == "promoted", [(p["name"], p["reason"]) for p in report["phases"]]
        assert len(canary_uids) == 1
        assert min(stable_replicas) > 0
        assert sum(w.emulator.faults.injected.values()) > 0


def _wait_for(w, worker: subprocess.Popen[str], done: Callable[[], bool], seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while not done():
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        assert time.time() < deadline, f"never reached; record: {annotations(w)}"
        time.sleep(0.02)


def test_flow_killed_mid_rollback_is_followed_by_a_run_that_finishes_the_rollback(tmp_path, spawn):
    """Killed while the canary-only rollback waits for stable to be ready again: the rerun
    must finish that rollback, never soak the old version and call it promoted."""
    with world(load_plan(TWO_PHASE), scenario="token-not-active", speed=SPEED, notifier=quiet()) as w:
        first = spawn(w, TWO_PHASE)
        _wait_for(w, first, lambda: annotations(w).get("phasegate.dev/phase-state") == "soaking")
        # Stable's extra pod now takes seconds to be Ready: the rollback is mid-way long enough to be killed.
        w.emulator.behaviour.ready_delay = 4.0
        _wait_for(w, first, lambda: annotations(w).get("phasegate.dev/phase-state") == "rolling-back")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert annotations(w)["phasegate.dev/phase-state"] == "rolling-back"
        rollback = json.loads(annotations(w)["phasegate.dev/rollback"])
        assert (rollback["phase"], rollback["strategy"]) == ("canary-10pct", "canary_only")

        w.emulator.behaviour.ready_delay = 0.05
        out, err = spawn(w, TWO_PHASE, "--take-over").communicate(timeout=180)
        report = json.loads(out.strip().splitlines()[-1])
        assert report["outcome"] == "rolled_back", err[-2000:]
        assert report["phases"] == []  # no phase soaked again
        assert (report["rollback"]["strategy"], report["rollback"]["phase"]) == ("canary_only", "canary-10pct")
        assert report["rollback"]["ok"]
        assert annotations(w)["phasegate.dev/phase-state"] == "rolled-back"
        assert "phasegate.dev/promoted-at" not in annotations(w)
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None
        assert w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["spec"]["replicas"] == 10


def test_flow_killed_between_deploy_and_first_round_keeps_the_baseline_measured_before_the_deploy(tmp_path, spawn):
    """Staging compares p99 with the value measured before the deploy. Killed after the new
    version is deployed, a rerun that measured the "pre-deploy" baseline again would measure
    the new version against itself, and a +100 ms regression would pass."""
    scenario = ROOT / "tests/plans/scenarios/staging-latency-regression.yaml"
    with world(load_plan(THREE_PHASE), scenario=str(scenario), speed=SPEED, notifier=quiet()) as w:
        first = spawn(w, THREE_PHASE, "--approval-floor", "5")

        def staging_image() -> str:
            d = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")
            return d["spec"]["template"]["spec"]["containers"][0]["image"]

        _wait_for(w, first, lambda: annotations(w).get("phasegate.dev/phase-state") == "deploying"
                  and staging_image() == w.image)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        baselines = json.loads(annotations(w)["phasegate.dev/pre-deploy-baselines"])
        before = baselines["staging/no-latency-regression"]
        assert before is not None

        out, err = spawn(w, THREE_PHASE, "--take-over", "--approval-floor", "5").communicate(timeout=180)
        report = json.loads(out.strip().splitlines()[-1])
        assert json.loads(annotations(w)["phasegate.dev/pre-deploy-baselines"])["staging/no-latency-regression"] \
            == before
        assert report["outcome"] != "promoted", err[-2000:]
        staging = report["phases"][0]
        assert staging["name"] == "staging" and staging["outcome"] == "hold"
        assert "no-latency-regression" in staging["reason"]
