"""Two rollouts, each in its own world, in one process: the run context keeps them apart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flows.rollout import progressive_rollout
from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import default_image, world
from phasegate.runctx import RunContextMissing

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
SPEED = 172800.0

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def plan_in(tmp_path: Path, namespace: str) -> Path:
    """The two-phase plan for a target in ``namespace``: a lock and a record of its own."""
    text = TWO_PHASE.read_text().replace("name: two-phase", f"name: two-phase-{namespace}")
    text = text.replace("namespaces: {production: bodhi}", f"namespaces: {{production: {namespace}}}")
    path = tmp_path / f"{namespace}.yaml"
    path.write_text(text)
    return path


def image_in(w, namespace: str) -> str | None:
    d = w.emulator.store.find("apps/deployments", namespace, "bodhi-server")
    return None if d is None else d["spec"]["template"]["spec"]["containers"][0]["image"]


def test_two_rollouts_with_different_clusters_and_prometheus_run_at_once_in_one_process(tmp_path):
    plans = {"team-a": plan_in(tmp_path, "team-a"), "team-b": plan_in(tmp_path, "team-b")}
    images = {"team-a": default_image(), "team-b": default_image().replace("1.6.0", "1.6.1")}
    quiet = ConsoleNotifier(file=open("/dev/null", "w"))  # noqa: SIM115 - the process' lifetime
    reports: dict[str, object] = {}
    with world(load_plan(plans["team-a"]), image=images["team-a"], speed=SPEED, notifier=quiet) as a, \
            world(load_plan(plans["team-b"]), image=images["team-b"], speed=SPEED, notifier=quiet) as b:
        worlds = {"team-a": a, "team-b": b}

        def rollout(key: str) -> None:
            try:
                reports[key] = run_in(worlds[key], plans[key], approve="auto")
            except Exception as exc:  # named by the assertion below
                reports[key] = exc

        threads = [threading.Thread(target=rollout, args=(k,)) for k in worlds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        outcomes = {k: r["outcome"] if isinstance(r, dict) else repr(r) for k, r in reports.items()}
        assert outcomes == {"team-a": "promoted", "team-b": "promoted"}
        # Each rollout changed its own cluster only.
        assert image_in(a, "team-a") == images["team-a"] and image_in(a, "team-b") is None
        assert image_in(b, "team-b") == images["team-b"] and image_in(b, "team-a") is None


def test_a_flow_started_without_a_run_context_refuses_before_touching_anything():
    with pytest.raises(RunContextMissing):
        progressive_rollout(str(TWO_PHASE), default_image())
