"""Preflight on the honest rehearsal world (series labelled as prometheus-operator labels
them): a plan selecting by labels the cluster does not attach is refused before anything
is deployed, with the matcher that matches nothing named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flows.rollout import PreflightFailed
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TRACK_PLAN = ROOT / "tests/plans/track-labels.yaml"

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def test_a_plan_selecting_by_track_is_refused_naming_the_matcher_and_nothing_is_deployed() -> None:
    with world(load_plan(TRACK_PLAN), speed=172800.0, notifier=ConsoleNotifier(file=io.StringIO())) as w:
        before = w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["spec"]
        with pytest.raises(PreflightFailed) as refused:
            run_in(w, TRACK_PLAN)
        problems = str(refused.value)
        assert "phases[canary-10pct].p99-latency-increase: no data for the stable track" in problems, problems
        # The first matcher no series has is named, with what the series carry instead.
        assert "deployment exists on no series of api_response_time_ms_bucket; its series carry" in problems
        assert "namespace, pod" in problems and "{{pods}}" in problems
        assert 'track="stable"' in problems  # the rendered query
        assert w.emulator.store.get("apps/deployments", "bodhi", "bodhi-server")["spec"] == before
        assert w.emulator.store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None
