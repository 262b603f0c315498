"""The approval form cannot be bypassed: an outsider, a resume without a decision, and an
approval with unticked criteria are each refused, and the run keeps waiting for a valid one.
An approval answers one pause of one run: not another rollout's pause, not a later pause."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from phasegate import runctx
from phasegate.adapters.console import ConsoleNotifier
from phasegate.approval_form import answer
from phasegate.clock import ScaledClock
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.app import SyntheticApp
from phasegate.rehearsal.cluster import ClusterEmulator, seed
from phasegate.rehearsal.prometheus import PrometheusServer
from phasegate.rehearsal.scenarios import load_scenario
from phasegate.rehearsal.world import (
    K8S_TIME_SCALE,
    REHEARSAL_TRAFFIC,
    SCRAPE_SECONDS,
    Approver,
    CheckServer,
    World,
    default_image,
    world,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


class Scripted(Approver):
    """Answers the first pause with each scripted input in turn, as several people might."""

    def __init__(self, script: list[dict]) -> None:
        super().__init__("auto")
        self.script = list(script)
        self.rejected_by_api: list[str] = []

    def __call__(self, flow_run_id: str, phase: str, fields: list[str], step: str = "advance") -> None:
        if self.script:
            answer = self.script.pop(0)
            threading.Thread(target=self._answer, args=(flow_run_id, answer), daemon=True).start()

    def _answer(self, flow_run_id: str, answer: dict) -> None:
        from prefect.client.orchestration import get_client
        from prefect.flow_runs import resume_flow_run

        with get_client(sync_client=True) as client:
            while not client.read_flow_run(UUID(flow_run_id)).state.is_paused():
                time.sleep(0.1)
        try:
            resume_flow_run(UUID(flow_run_id), run_input=answer)
        except Exception as exc:  # the server validates run_input against the form's schema
            self.rejected_by_api.append(str(exc))
            self.__call__(flow_run_id, "", [])  # the person tries again
            return
        self.answers.append(answer)


@pytest.fixture
def guarded_plan(tmp_path: Path) -> Path:
    text = (ROOT / "tests/plans/two-phase.yaml").read_text().replace(
        "approval: {required: true, timeout: 24h, on_timeout: halt}",
        "approval: {required: true, approvers: [alice], timeout: 24h, on_timeout: halt}",
    )
    path = tmp_path / "guarded.yaml"
    path.write_text(text)
    return path


def test_outsider_missing_decision_and_unticked_criteria_are_refused_then_alice_approves(guarded_plan):
    approver = Scripted([
        answer("approve", "mallory", "", [True]),
        answer("approve", "   ", "", [True]),  # the form's min_length lets it through
        {"approver": "alice", "comment": "", "criterion_1": True},  # no decision: must not pass as one
        answer("", "alice", "", [True]),  # both decision switches off, as the form starts
        {**answer("approve", "alice", "", [True]), "reject": True},  # both on
        {**answer("approve", "alice", "", [True]), "criterion_1": None},  # a criterion left out
        answer("approve", "alice", "", [False]),
        answer("approve", "alice", "audit logs checked", [True]),
    ])
    with open(os.devnull, "w") as devnull, world(
        load_plan(guarded_plan), speed=172800.0, notifier=ConsoleNotifier(file=devnull)
    ) as w:
        report = run_in(w, guarded_plan, approve=approver, approval_floor=60.0)
    assert report["outcome"] == "promoted"
    approval = report["approvals"][0]
    assert (approval["decision"], approval["approver"], approval["comment"]) == ("approve", "alice",
                                                                                 "audit logs checked")
    refused = approval["refused"]
    assert [r["approver"] for r in refused] == ["mallory", "", "alice"]
    assert "not on the approver list" in refused[0]["why"]
    assert refused[1]["why"] == "the approver's name is blank"
    assert "every criterion ticked" in refused[2]["why"]
    # No decision, neither or both switches on, a criterion missing: the Prefect server itself
    # refuses them against the form's schema; the run never sees them.
    assert len(approver.rejected_by_api) == 4, approver.rejected_by_api


def _target_plan(folder: Path, name: str, namespace: str, deployment: str, *, half: bool = False) -> Path:
    """two-phase.yaml for another target; ``half`` adds a 50 % canary, a second approval pause."""
    text = (ROOT / "tests/plans/two-phase.yaml").read_text()
    # Which run an approval moves is the subject here, not the p99 of a one-pod canary over a
    # two-second window, which two worlds sharing a loaded CPU sometimes read 20 ms apart.
    text = text.replace('      - {name: latency-within-range, metric: api_latency_p99_ms, kind: delta, op: "<", threshold: 20}\n', "")
    text = text.replace("name: two-phase", f"name: {name}").replace(
        "deployment: bodhi-server", f"deployment: {deployment}").replace(
        "production: bodhi}", f"production: {namespace}}}")
    if half:
        canary = text[text.index("  - name: canary-10pct"):text.index("  - name: full")]
        text = text.replace("  - name: full", canary.replace("canary-10pct", "canary-50pct").replace(
            "canary_share: 10", "canary_share: 50") + "  - name: full")
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def shared_world(paths: list[Path]) -> Iterator[list[World]]:
    """One emulator, app, Prometheus and clock for several targets, as bench/scale.py builds
    them: the runtime is process-wide, so rollouts in one process must share one cluster."""
    plans = [load_plan(p) for p in paths]
    image, scenario, clock = default_image(), load_scenario("healthy"), ScaledClock(172800.0)
    worlds: list[World] = []
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(ClusterEmulator(ready_delay=0.05, time_scale=K8S_TIME_SCALE))
        for plan in plans:
            seed(emulator, namespaces=(plan.target.namespaces.production,), deployment=plan.target.deployment,
                 container=plan.target.container)
        prometheus = PrometheusServer(scrape_interval=SCRAPE_SECONDS)
        stack.callback(prometheus.close)
        app = stack.enter_context(SyntheticApp(lambda: [o for w in worlds for o in w.observe()], image, scenario,
                                               clock, profile=REHEARSAL_TRAFFIC, tick_seconds=0.1,
                                               on_targets=prometheus.set_target_groups))
        prometheus.start()
        checks = stack.enter_context(CheckServer())
        notifier = ConsoleNotifier(file=stack.enter_context(open(os.devnull, "w")))
        worlds.extend(World(p, image, scenario, clock, emulator, app, prometheus, notifier, checks) for p in plans)
        prometheus.wait_for_data("count(up == 1)", timeout=30)
        yield worlds


class Pauses:
    """Records each approval pause and answers none: the test answers them itself."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, flow_run_id: str, phase: str, fields: list[str], step: str = "advance") -> None:
        self.seen.append((flow_run_id, phase))

    def wait(self, phase: str, plan_path: Path, deadline: float) -> str:
        """The flow run of ``plan_path`` once it is Paused at ``phase``."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while time.time() < deadline:
                for run_id, at in list(self.seen):
                    run = client.read_flow_run(UUID(run_id))
                    if at == phase and run.parameters.get("plan_path") == str(plan_path) and run.state.is_paused():
                        return run_id
                time.sleep(0.1)
        raise AssertionError(f"{plan_path.name} never paused at {phase}: {self.seen}")


def _release(w: World) -> tuple[str, str, int, str]:
    """(phase, phase state, canary replicas, stable image) of a world's target."""
    ns, name = w.plan.target.namespaces.production, w.plan.target.deployment
    stable = w.emulator.store.get("apps/deployments", ns, name)
    canary = w.emulator.store.find("apps/deployments", ns, name + "-canary")
    annotations = stable["metadata"].get("annotations") or {}
    image = next(c["image"] for c in stable["spec"]["template"]["spec"]["containers"] if c["name"] == "bodhi-server")
    return (annotations.get("phasegate.dev/phase"), annotations.get("phasegate.dev/phase-state"),
            canary["spec"]["replicas"] if canary else 0, image)


def _approve(run_id: str, approver: str, comment: str) -> float:
    """Approve the run's current pause; the wall time before the answer reached Prefect."""
    from prefect.flow_runs import resume_flow_run

    before = time.time()
    resume_flow_run(UUID(run_id), run_input=answer("approve", approver, comment, [True]))
    return before


def _watch(seconds: float, check: Callable[[], None]) -> None:
    """``check`` holds at every look for ``seconds`` (a few of the runs' 1 s pause polls)."""
    until = time.time() + seconds
    while time.time() < until:
        check()
        time.sleep(0.2)


def test_approval_of_one_rollout_advances_only_that_run_and_only_that_pause(tmp_path):
    """Two targets paused for approval at once. Approving A moves A and nothing of B; A's
    next pause waits for its own answer; B, approved last, then finishes."""
    from flows.rollout import progressive_rollout

    path_a = _target_plan(tmp_path, "guard-a", "team-a", "svc-a", half=True)
    path_b = _target_plan(tmp_path, "guard-b", "team-b", "svc-b")
    pauses = Pauses()
    reports: dict[str, Any] = {}

    def rollout(key: str, path: Path) -> None:
        try:
            reports[key] = progressive_rollout(str(path), default_image(), lock_timeout_seconds=30.0)
        except Exception as exc:  # the assertion below names it
            reports[key] = exc

    with shared_world([path_a, path_b]) as (a, b), runctx.use(a.run_context(approval_floor=120.0, on_pause=pauses)):
        old_image = _release(b)[3]
        threads = {k: threading.Thread(target=contextvars.copy_context().run, args=(rollout, k, p), daemon=True)
                   for k, p in (("a", path_a), ("b", path_b))}
        for t in threads.values():
            t.start()
        deadline = time.time() + 120
        run_a = pauses.wait("canary-10pct", path_a, deadline)
        run_b = pauses.wait("canary-10pct", path_b, deadline)
        at_canary = ("canary-10pct", "passed", 1, old_image)
        assert _release(a) == _release(b) == at_canary

        def b_untouched() -> None:
            assert _release(b) == at_canary
            assert _flow_run_paused(run_b)

        approved_a1 = _approve(run_a, "alice", "A at 10% is fine")
        # A runs its 50 % phase and pauses again: that pause needs its own answer.
        assert pauses.wait("canary-50pct", path_a, time.time() + 120) == run_a
        b_untouched()

        def a_waits_at_half() -> None:
            assert _release(a)[:3] == ("canary-50pct", "passed", 5)
            assert _flow_run_paused(run_a)
            b_untouched()

        _watch(3.0, a_waits_at_half)
        approved_a2 = _approve(run_a, "alice", "A at 50% is fine")
        threads["a"].join(timeout=120)
        report_a = reports.get("a")
        assert isinstance(report_a, dict) and report_a["outcome"] == "promoted", report_a
        assert [(x["phase"], x["decision"], x["comment"]) for x in report_a["approvals"]] == [
            ("canary-10pct", "approve", "A at 10% is fine"), ("canary-50pct", "approve", "A at 50% is fine")]
        started = {p["name"]: p["started_wall"] for p in report_a["phases"]}
        assert approved_a1 < started["canary-50pct"] and approved_a2 < started["full"]

        # A is promoted; B has not moved: still paused at its canary share, stable on the old image.
        b_untouched()
        assert _release(a)[2:] == (0, a.image)
        approved_b = _approve(run_b, "bob", "B is fine")
        threads["b"].join(timeout=120)
        report_b = reports.get("b")
        assert isinstance(report_b, dict) and report_b["outcome"] == "promoted", report_b
        assert [(x["phase"], x["approver"], x["comment"]) for x in report_b["approvals"]] == [
            ("canary-10pct", "bob", "B is fine")]
        assert approved_b < next(p["started_wall"] for p in report_b["phases"] if p["name"] == "full")
        assert _release(b)[1:] == ("promoted", 0, b.image)


def _flow_run_paused(run_id: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state.is_paused()

