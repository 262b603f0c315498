"""One target, one rollout at a time — and a rollout survives the death of its process.

The crash test hosts the world (emulator, app, Prometheus) in the test process and runs
the flow in a child process that it SIGKILLs mid-soak, as a node failure would kill a
worker pod while the cluster and its annotations stay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.rehearsal import Approver, run_in, world
from flows.rollout import RolloutRefused
from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
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


def _worker(w, *extra: str) -> subprocess.Popen[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/flows/crash_worker.py"), "--emulator", w.emulator.url,
         "--prometheus", w.prometheus.url, "--plan", str(TWO_PHASE), "--image", w.image,
         "--speed", str(SPEED), "--epoch", str(w.clock.epoch), "--checks-port", str(w.checks.port), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _deployment_creations(w) -> int:
    """POSTs of Deployments: in a whole rollout only the canary is ever created."""
    return sum(1 for r in w.emulator.requests if r.method == "POST" and r.path.endswith("/deployments"))


def test_flow_killed_mid_soak_resumes_without_redeploying_or_renotifying():
    with world(load_plan(TWO_PHASE), speed=SPEED, notifier=quiet()) as w:
        first = _worker(w)
        deadline = time.time() + 90
        while time.time() < deadline and not (
            annotations(w).get("phasegate.dev/phase") == "canary-10pct"
            and annotations(w).get("phasegate.dev/phase-state") == "soaking"
        ):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert _deployment_creations(w) == 1
        assert "canary-10pct:started" in json.loads(annotations(w)["phasegate.dev/notified"])

        second = _worker(w, "--take-over")
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["outcome"] == "promoted"
        assert report["resumed"] is True
        assert [p["name"] for p in report["phases"]] == ["canary-10pct", "full"]
        kinds = [(e["kind"], e.get("phase")) for e in report["events"] if e["event"] == "notification"]
        assert ("rollout_started", None) not in kinds
        assert ("phase_started", "canary-10pct") not in kinds
        assert ("phase_started", "full") in kinds
        assert not any(e["event"] == "deployed" and e["phase"] == "canary-10pct" for e in report["events"])
        assert _deployment_creations(w) == 1  # the canary was created once, by the first run
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None


def test_rollout_refuses_to_start_until_the_pre_deployment_checklist_is_confirmed():
    from flows.rollout import PreflightFailed, progressive_rollout
    from tasks.runtime import using

    seed_plan = ROOT / "deployments/plans/token-refresh-locking.yaml"
    with world(load_plan(seed_plan), speed=SPEED, notifier=quiet()) as w:
        staging_before = w.emulator.store.get("apps/deployments", "bodhi-staging", "bodhi-server")["spec"]
        with using(w.runtime(approval_floor=5.0, on_pause=None)), pytest.raises(
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
