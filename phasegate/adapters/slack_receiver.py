"""The Slack interactivity endpoint: a button press on an approval message resumes the run.

Design decisions:

* One route, ``POST /slack/actions`` (the app's Interactivity Request URL). The raw body is
  verified with the signing secret before anything is parsed (``slack_approval.verify``):
  a forged, altered or replayed request is answered 401 and resumes nothing.
* A verified press is turned into the approval form's input by the pure core
  (``slack_approval.answer``) and handed to ``resume`` — in production Prefect's
  ``resume_flow_run`` through the API, wired by the entry point — so the paused flow
  applies its own checks to it, as to any answer. Slack gets a reply shown only to the
  person who pressed (``response_type: ephemeral``): recorded, or why not.
* The signing secret is never logged or echoed; refusals name the check that failed only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from phasegate import slack_approval
from phasegate.plan import RolloutPlan

Resume = Callable[[str, dict[str, Any]], None]


@dataclass
class Receiver:
    """Holds the plan, the secret and what was done, for the app and for tests."""

    plan: RolloutPlan
    signing_secret: str
    resume: Resume
    clock: Callable[[], float] = time.time
    resumed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/slack/actions", self._actions, methods=["POST"])])

    async def _actions(self, request: Request) -> JSONResponse:
        body = await request.body()
        why = slack_approval.verify(self.signing_secret, request.headers.get("x-slack-request-timestamp"),
                                    request.headers.get("x-slack-signature"), body, self.clock())
        if why:
            self.refused.append(why)
            return JSONResponse({"error": why}, status_code=401)
        try:
            click = slack_approval.parse_click(body)
            phase = self.plan.phase(click.phase)
        except (ValueError, KeyError) as exc:
            self.refused.append(str(exc))
            return _ephemeral(f"Not recorded: {exc}")
        data, why = slack_approval.answer(click, phase, self.plan.notifications.slack.approvers
                                          if self.plan.notifications.slack else {})
        if data is None:
            self.refused.append(why)
            return _ephemeral(f"Not recorded: {why}")
        try:
            await run_in_threadpool(self.resume, click.flow_run_id, data)
        except Exception as exc:  # the run may have moved on (timed out, answered in the UI)
            self.refused.append(f"resume failed: {type(exc).__name__}")
            return _ephemeral(f"Not recorded: the run could not be resumed ({type(exc).__name__}: {exc})")
        self.resumed.append((click.flow_run_id, data))
        return _ephemeral(f"Recorded: {click.decision} of {phase.name} by {data['approver']}.")


def _ephemeral(text: str) -> JSONResponse:
    return JSONResponse({"response_type": "ephemeral", "replace_original": False, "text": text})
