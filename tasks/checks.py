"""Smoke and load checks run after a deploy, before the soak.

A load check fires ``requests`` HTTP calls with ``concurrency`` in flight (the seed asks for
1000+ concurrent requests) and fails when more than ``max_error_rate`` of them fail or
answer an unexpected status. Bounded in count and time by construction.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from prefect import get_run_logger, task

from phasegate import runctx
from phasegate.plan import Check
from tasks.common import NO_CACHE


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    requests: int
    failures: int
    error_rate: float
    passed: bool
    detail: str


def run_check(check: Check) -> CheckResult:
    url = runctx.get().url_for_check(check.url)
    limits = httpx.Limits(max_connections=check.concurrency, max_keepalive_connections=check.concurrency)
    timeout = check.timeout.total_seconds()
    first_error = ""

    def one(client: httpx.Client) -> bool:
        nonlocal first_error
        try:
            response = client.request(check.method, url)
        except httpx.HTTPError as exc:
            first_error = first_error or f"{type(exc).__name__}"
            return False
        if response.status_code != check.expect_status:
            first_error = first_error or f"HTTP {response.status_code}"
            return False
        return True

    with httpx.Client(timeout=timeout, limits=limits) as client, ThreadPoolExecutor(check.concurrency) as pool:
        results = list(pool.map(lambda _: one(client), range(check.requests)))
    failures = results.count(False)
    rate = failures / check.requests
    passed = rate <= check.max_error_rate
    detail = f"{failures}/{check.requests} failed" + (f" (first: {first_error})" if first_error else "")
    return CheckResult(check.name, check.kind, check.requests, failures, rate, passed, detail)


@task(name="run_phase_checks", **NO_CACHE)
def run_phase_checks(checks: list[Check]) -> list[CheckResult]:
    results = [run_check(c) for c in checks]
    for r in results:
        get_run_logger().info("check %s (%s): %s", r.name, r.kind, r.detail)
    return results
