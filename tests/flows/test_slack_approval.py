"""Approving from Slack with real identity: the approval message's button, pressed as Slack
delivers it (signed) from the loopback Slack server, resumes a real paused Prefect run
through the API; a forged or replayed press, or an unmapped user, moves nothing."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import uvicorn
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.runtime import flow_run

from flows.approval import approval_form
from phasegate import approval_form as approval_form_fields
from phasegate import slack_approval
from phasegate.adapters.slack import SlackBotNotifier
from phasegate.adapters.slack_receiver import Receiver
from phasegate.notify import Kind, Notification, Severity
from phasegate.plan import RolloutPlan
from phasegate.rehearsal.slack_server import Message, SlackServer
from tests.core.builders import seed_plan

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a signing secret of Slack's shape
ALICE, MALLORY = "U0ALICE01", "U0MALLORY"
PHASE = "canary-10pct"


def plan_with_slack_approvers() -> RolloutPlan:
    plan = seed_plan()
    slack = plan.notifications.slack.model_copy(update={"approvers": {ALICE: "alice"}})
    phases = [p.model_copy(update={"approval": p.approval.model_copy(update={"approvers": ["alice", "bob"]})})
              if p.name == PHASE else p for p in plan.phases]
    return plan.model_copy(update={"notifications": plan.notifications.model_copy(update={"slack": slack}),
                                   "phases": phases})


PLAN = plan_with_slack_approvers()
started: list[str] = []


@flow(name="paused-for-slack")
def paused_for_slack() -> dict[str, Any]:
    started.append(str(flow_run.get_id()))
    answer = pause_flow_run(wait_for_input=approval_form(PLAN.phase(PHASE)), timeout=120, poll_interval=1)
    return answer.model_dump(exclude={"metadata"})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    def resume(run_id: str, data: dict[str, Any]) -> None:
        resume_flow_run(UUID(run_id), run_input=data)

    state = Receiver(PLAN, SECRET, resume)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(state.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield state, f"http://127.0.0.1:{sock.getsockname()[1]}/slack/actions"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def paused_run() -> Iterator[tuple[str, dict[str, Any]]]:
    started.clear()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(answer=paused_for_slack()), daemon=True)
    thread.start()
    while not started:
        time.sleep(0.05)
    run_id = started[0]
    with get_client(sync_client=True) as client:
        while not client.read_flow_run(UUID(run_id)).state.is_paused():
            time.sleep(0.1)
    yield run_id, result
    with contextlib.suppress(Exception):  # a test that left it paused: let the thread end
        resume_flow_run(UUID(run_id), run_input=approval_form_fields.answer(
            "reject", "cleanup", "", [False] * len(PLAN.phase(PHASE).manual_criteria)))
    thread.join(timeout=30)


def approval_message(slack_server: SlackServer, run_id: str) -> Message:
    notifier = SlackBotNotifier(slack_server.token or "", "#deploys", base_url=slack_server.url, retry_backoff=0.01)
    value = slack_approval.button_value(run_id, PHASE)
    notifier.post(Notification(kind=Kind.APPROVAL_NEEDED, severity=Severity.INFO, rollout="bodhi:1.6.0",
                               text=f"{PHASE} is waiting for approval", phase=PHASE,
                               actions=[(slack_approval.APPROVE, "Approve (attests every criterion above)", value),
                                        (slack_approval.REJECT, "Reject", value)]))
    return next(m for m in slack_server.messages if any(b.get("type") == "actions" for b in m.blocks or []))


def state_of(run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state.type.value


def test_a_signed_press_by_a_mapped_approver_resumes_the_run_with_their_name(
        slack_server: SlackServer, receiver: tuple[Receiver, str], paused_run: tuple[str, dict[str, Any]]) -> None:
    state, url = receiver
    run_id, result = paused_run
    message = approval_message(slack_server, run_id)
    status, reply = slack_server.press(message, slack_approval.APPROVE, user_id=ALICE, request_url=url,
                                       signing_secret=SECRET)
    assert status == 200 and reply["text"] == f"Recorded: approve of {PHASE} by alice."
    assert [r for r, _ in state.resumed] == [run_id]
    deadline = time.monotonic() + 30
    while "answer" not in result:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    answer = result["answer"]
    assert (answer["approve"], answer["reject"], answer["approver"]) == (True, False, "alice")
    assert f"<@{ALICE}>" in answer["comment"]
    assert all(v for k, v in answer.items() if k.startswith("criterion_"))


def test_a_signed_reject_press_is_accepted_by_the_server_with_every_criterion_off(
        slack_server: SlackServer, receiver: tuple[Receiver, str], paused_run: tuple[str, dict[str, Any]]) -> None:
    # The form requires every criterion: had the Reject press left them out, the Prefect
    # server would refuse the resume and the run would stay paused.
    assert PLAN.phase(PHASE).manual_criteria
    _state, url = receiver
    run_id, result = paused_run
    message = approval_message(slack_server, run_id)
    status, reply = slack_server.press(message, slack_approval.REJECT, user_id=ALICE, request_url=url,
                                       signing_secret=SECRET)
    assert status == 200 and reply["text"] == f"Recorded: reject of {PHASE} by alice."
    deadline = time.monotonic() + 30
    while "answer" not in result:
        assert time.monotonic() < deadline, f"still {state_of(run_id)}"
        time.sleep(0.1)
    answer = result["answer"]
    assert (answer["approve"], answer["reject"], answer["approver"]) == (False, True, "alice")
    criteria = [v for k, v in answer.items() if k.startswith("criterion_")]
    assert criteria and not any(criteria)


@pytest.mark.parametrize("forgery", ["wrong secret", "replayed after six minutes"])
def test_a_forged_or_replayed_press_is_refused_and_the_run_stays_paused(
        slack_server: SlackServer, receiver: tuple[Receiver, str], paused_run: tuple[str, dict[str, Any]],
        forgery: str) -> None:
    state, url = receiver
    run_id, _ = paused_run
    message = approval_message(slack_server, run_id)
    secret, stamp = ("not-the-signing-secret", None) if forgery == "wrong secret" else (SECRET, time.time() - 360)
    status, reply = slack_server.press(message, slack_approval.APPROVE, user_id=ALICE, request_url=url,
                                       signing_secret=secret, timestamp=stamp)
    assert status == 401 and SECRET not in str(reply)
    assert state.resumed == []
    time.sleep(1.5)
    assert state_of(run_id) == "PAUSED"


def test_a_signed_press_by_someone_not_mapped_to_an_approver_is_refused(
        slack_server: SlackServer, receiver: tuple[Receiver, str], paused_run: tuple[str, dict[str, Any]]) -> None:
    state, url = receiver
    run_id, _ = paused_run
    message = approval_message(slack_server, run_id)
    status, reply = slack_server.press(message, slack_approval.APPROVE, user_id=MALLORY, request_url=url,
                                       signing_secret=SECRET)
    assert status == 200 and reply["text"].startswith(f"Not recorded: Slack user {MALLORY} is not mapped")
    assert state.resumed == [] and state_of(run_id) == "PAUSED"
