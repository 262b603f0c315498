"""Runs one rollout in its own process against a world the test process hosts, so the test
can SIGKILL it mid-phase and start another: the cluster (emulator), the app and Prometheus
outlive the flow process, as a real cluster outlives a worker pod."""

from __future__ import annotations

import argparse
import json
import sys

from flows.rehearsal import SCRAPE_SECONDS, Approver, _loopback
from flows.rollout import progressive_rollout
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.clock import ScaledClock
from tasks.runtime import Runtime, using


def main() -> None:
    parser = argparse.ArgumentParser()
    for arg in ("--emulator", "--prometheus", "--plan", "--image"):
        parser.add_argument(arg, required=True)
    parser.add_argument("--speed", type=float, required=True)
    parser.add_argument("--epoch", type=float, required=True)
    parser.add_argument("--checks-port", type=int, required=True)
    parser.add_argument("--take-over", action="store_true")
    args = parser.parse_args()
    approver = Approver("auto")
    runtime = Runtime(
        cluster=KubernetesCluster.from_url(args.emulator, poll_interval=0.05, backoff=0.05, max_backoff=0.5),
        metrics=PrometheusProvider(args.prometheus, timeout=5.0),
        notifier=ConsoleNotifier(file=sys.stderr),
        clock=ScaledClock(args.speed, epoch=args.epoch),
        min_interval_wall=SCRAPE_SECONDS,
        min_window_wall=4 * SCRAPE_SECONDS,
        min_warmup_wall=4 * SCRAPE_SECONDS,
        min_soak_wall=6 * SCRAPE_SECONDS,
        min_approval_wall=15.0,
        approval_poll_seconds=1,
        url_for_check=lambda url: _loopback(url, args.checks_port),
        on_pause=approver,
    )
    with using(runtime):
        report = progressive_rollout(args.plan, args.image, lock_timeout_seconds=90.0, take_over=args.take_over)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
