"""Runs one rollout in its own process against a world the test process hosts, so the test
can SIGKILL it mid-phase and start another: the cluster (emulator), the app and Prometheus
outlive the flow process, as a real cluster outlives a worker pod.

What the process did before it was killed must be known to the test without its report:
``--events`` appends every event the rollout records (notifications included) to a file as
it happens, and ``--pauses`` appends the flow run id of every approval pause, so the test
can kill the process while it is paused and answer the new run's pause itself.
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.rollout import run_rollout
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.clock import ScaledClock
from phasegate.rehearsal.world import DISCOVERY_SECONDS, SCRAPE_SECONDS, Approver, _loopback
from phasegate.runctx import Pacing, RunContext, use


def main() -> None:
    parser = argparse.ArgumentParser()
    for arg in ("--emulator", "--prometheus", "--plan", "--image"):
        parser.add_argument(arg, required=True)
    parser.add_argument("--speed", type=float, required=True)
    parser.add_argument("--epoch", type=float, required=True)
    parser.add_argument("--checks-port", type=int, required=True)
    parser.add_argument("--take-over", action="store_true")
    parser.add_argument("--approve", default="auto", help="Approver mode; 'ui' leaves pauses to the test")
    parser.add_argument("--approval-floor", type=float, default=15.0)
    parser.add_argument("--events", help="append each recorded event here as a JSON line")
    parser.add_argument("--pauses", help="append the flow run id of each approval pause here")
    args = parser.parse_args()
    approver = Approver(args.approve, say=lambda text: print(text, file=sys.stderr))

    def on_pause(flow_run_id: str, phase: str, fields: list[str], step: str = "advance") -> None:
        if args.pauses:
            _append(args.pauses, flow_run_id)
        approver(flow_run_id, phase, fields, step)

    def on_event(event: dict) -> None:
        if args.events:
            _append(args.events, json.dumps(event, default=str))

    ctx = RunContext(
        cluster=KubernetesCluster.from_url(args.emulator, poll_interval=0.05, backoff=0.05, max_backoff=0.5),
        metrics=PrometheusProvider(args.prometheus, timeout=5.0),
        notifier=ConsoleNotifier(file=sys.stderr),
        clock=ScaledClock(args.speed, epoch=args.epoch),
        pacing=Pacing(
            min_interval_wall=SCRAPE_SECONDS,
            min_window_wall=4 * SCRAPE_SECONDS,
            min_warmup_wall=4 * SCRAPE_SECONDS + DISCOVERY_SECONDS,
            min_soak_wall=6 * SCRAPE_SECONDS,
            min_approval_wall=args.approval_floor,
            approval_poll_seconds=1,
        ),
        url_for_check=lambda url: _loopback(url, args.checks_port),
        on_pause=on_pause,
        on_event=on_event,
    )
    with use(ctx):
        report = run_rollout(args.plan, args.image, lock_timeout_seconds=90.0, take_over=args.take_over)
    print(json.dumps(report, default=str))


def _append(path: str, line: str) -> None:
    """One whole line per write, flushed at once: the process may be SIGKILLed at any moment."""
    with open(path, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
