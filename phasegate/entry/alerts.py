"""``phasegate alert-receiver``: Alertmanager's webhook, turned into Prefect events.

Design decisions:

* The receiver only translates: each *new firing* alert becomes one ``phasegate.alert.firing``
  event, its resource ``phasegate.alert.<fingerprint>`` labelled with the plan the rule's
  ``plan`` label names. What happens next is declared in ``prefect.yaml``: the
  ``rollback-candidate`` deployment's trigger (an automation ``prefect deploy`` or
  ``phasegate.entry.register`` creates) starts that flow with the alert as its parameter.
  Keeping the decision in a flow puts it in the Prefect UI, with its evidence, where a
  person can be asked; the receiver stays a stateless-enough web hook.
* Alertmanager repeats a firing group every ``repeat_interval`` and sends ``resolved`` when it
  clears. A repeat (same fingerprint and ``startsAt``) and a resolved alert start nothing:
  the receiver keeps the keys it has emitted (bounded), and the flow notes each key on the
  release record, so a second receiver replica or a restart does not start a second rollback.
  A resolved alert is emitted as ``phasegate.alert.resolved`` for the record, which no
  automation acts on.
* Starlette and uvicorn, bound to the address given (loopback by default; in a cluster the
  Deployment in ``deployments/k8s/alert-receiver.yaml`` listens on the pod IP behind a Service).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import typer

FIRING, RESOLVED = "phasegate.alert.firing", "phasegate.alert.resolved"
KEYS_KEPT = 10_000


class AlertReceiver:
    """The webhook's state: which alerts it has already turned into events."""

    def __init__(self) -> None:
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.stats = {"notifications": 0, "firing_emitted": 0, "duplicates": 0, "resolved": 0}

    def handle(self, payload: dict[str, Any]) -> dict[str, int]:
        from prefect.events import emit_event

        self.stats["notifications"] += 1
        emitted = 0
        for alert in payload.get("alerts") or []:
            labels = alert.get("labels") or {}
            fingerprint = str(alert.get("fingerprint") or "")
            resource = {
                "prefect.resource.id": f"phasegate.alert.{fingerprint}",
                "prefect.resource.name": str(labels.get("alertname", "")),
                "phasegate.plan": str(labels.get("plan", "")),
                "phasegate.severity": str(labels.get("severity", "")),
            }
            if alert.get("status") == "resolved":
                self.stats["resolved"] += 1
                emit_event(RESOLVED, resource, payload={"alert": alert})
                continue
            key = f"{fingerprint}@{alert.get('startsAt')}"
            if key in self.seen:
                self.stats["duplicates"] += 1
                continue
            self.seen[key] = None
            while len(self.seen) > KEYS_KEPT:
                self.seen.popitem(last=False)
            emit_event(FIRING, resource, payload={"alert": alert, "externalURL": payload.get("externalURL")})
            self.stats["firing_emitted"] += 1
            emitted += 1
        return {"emitted": emitted}


def make_app(receiver: AlertReceiver) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def alertmanager(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "expected an Alertmanager webhook payload"}, status_code=400)
        return JSONResponse(receiver.handle(payload))

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(receiver.stats)

    return Starlette(routes=[Route("/alertmanager", alertmanager, methods=["POST"]),
                             Route("/healthz", stats), Route("/stats", stats)])


def alert_receiver_command(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (a pod: 0.0.0.0 behind its Service)."),
    port: int = typer.Option(9095, help="Port; Alertmanager's webhook_configs url is http://HOST:PORT/alertmanager."),
) -> None:
    """Receive Alertmanager webhooks and emit each new firing alert as a Prefect event (see prefect.yaml)."""
    import uvicorn

    uvicorn.run(make_app(AlertReceiver()), host=host, port=port, log_level="warning")
