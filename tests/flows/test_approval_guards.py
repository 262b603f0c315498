"""The approval form cannot be bypassed: an outsider, a resume without a decision, and an
approval with unticked criteria are each refused, and the run keeps waiting for a valid one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from flows.rehearsal import Approver, run_in, world
from phasegate.adapters.console import ConsoleNotifier
from phasegate.plan import load_plan

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
        {"decision": "approve", "approver": "mallory", "criterion_1": True},
        {"approver": "alice", "criterion_1": True},  # no decision: must not pass as one
        {"decision": "approve", "approver": "alice", "criterion_1": False},
        {"decision": "approve", "approver": "alice", "comment": "audit logs checked", "criterion_1": True},
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
    assert [r["approver"] for r in refused] == ["mallory", "alice"]
    assert "not on the approver list" in refused[0]["why"]
    assert "every criterion ticked" in refused[1]["why"]
    assert len(approver.rejected_by_api) == 1
