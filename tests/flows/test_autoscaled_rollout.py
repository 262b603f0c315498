"""The real rollout flow on a target an HPA scales: the load doubles during the canary,
stable's autoscaler follows it (the only one: a second on the canary's pods would stop both),
the trigger rolls the canary back, and the rollback is verified without demanding the
replica count of the start."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from phasegate.adapters.console import ConsoleNotifier
from phasegate.entry.rehearse import run_in
from phasegate.plan import load_plan
from phasegate.rehearsal.world import world

ROOT = Path(__file__).resolve().parents[2]
TWO_PHASE = ROOT / "tests/plans/two-phase.yaml"
HPA = "autoscaling/horizontalpodautoscalers"

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def test_a_canary_rollback_with_an_hpa_is_verified_and_restores_it_exactly():
    with open(os.devnull, "w") as devnull, world(load_plan(TWO_PHASE), scenario="token-not-active",
                                                 speed=172800.0, notifier=ConsoleNotifier(file=devnull)) as w:
        store = w.emulator.store
        w.emulator.behaviour.load["bodhi"] = 5.0  # ten pods at the 50 % target
        store.create(HPA, "bodhi", {
            "metadata": {"name": "bodhi-server"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bodhi-server"},
                     "minReplicas": 4, "maxReplicas": 40,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": 50}}}]}})
        original = store.get(HPA, "bodhi", "bodhi-server")["spec"]
        during: list[tuple[int, int]] = []
        autoscalers: set[str] = set()
        reasons: set[str] = set()
        stop = threading.Event()

        def double_the_load_once_the_canary_serves() -> None:
            while not stop.is_set():
                canary = store.find("apps/deployments", "bodhi", "bodhi-server-canary")
                if canary is not None and (canary.get("status") or {}).get("readyReplicas"):
                    w.emulator.behaviour.load["bodhi"] = 11.0
                    stable = store.get("apps/deployments", "bodhi", "bodhi-server")["spec"]["replicas"]
                    during.append((stable, canary["spec"]["replicas"]))
                for hpa in store.list(HPA, "bodhi"):
                    autoscalers.add(hpa["metadata"]["name"])
                    reasons.update(c["reason"] for c in (hpa.get("status") or {}).get("conditions") or [])
                time.sleep(0.05)

        watcher = threading.Thread(target=double_the_load_once_the_canary_serves)
        watcher.start()
        try:
            report = run_in(w, TWO_PHASE)
        finally:
            stop.set()
            watcher.join()
        rb = report["rollback"]
        assert report["outcome"] == "rolled_back" and rb["strategy"] == "canary_only"
        assert rb["ok"] and rb["cluster_verified"], rb["detail"]
        assert max(s + c for s, c in during) >= 20  # stable's autoscaler followed the doubled load
        assert autoscalers == {"bodhi-server"} and "AmbiguousSelector" not in reasons
        assert store.get(HPA, "bodhi", "bodhi-server")["spec"] == original
        assert store.find(HPA, "bodhi", "bodhi-server-canary") is None
        assert store.get("apps/deployments", "bodhi", "bodhi-server")["spec"]["replicas"] >= 18  # not the start's 10


def test_a_target_whose_autoscaler_another_one_stops_is_refused_at_preflight_with_nothing_deployed():
    from flows.rollout import PreflightFailed

    with open(os.devnull, "w") as devnull, world(load_plan(TWO_PHASE), speed=172800.0,
                                                 notifier=ConsoleNotifier(file=devnull)) as w:
        store = w.emulator.store
        w.emulator.behaviour.load["bodhi"] = 5.0
        for name in ("bodhi-server", "keda-hpa-bodhi-server"):  # e.g. KEDA's beside a team's own
            store.create(HPA, "bodhi", {
                "metadata": {"name": name},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bodhi-server"},
                         "minReplicas": 4, "maxReplicas": 40}})
        deadline = time.monotonic() + 10
        while not any(c["reason"] == "AmbiguousSelector" for c in
                      (store.get(HPA, "bodhi", "bodhi-server").get("status") or {}).get("conditions") or []):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = store.get("apps/deployments", "bodhi", "bodhi-server")["spec"]
        with pytest.raises(PreflightFailed) as refused:
            run_in(w, TWO_PHASE)
        assert "HPA bodhi-server does not scale (AmbiguousSelector" in str(refused.value)
        assert "bodhi/keda-hpa-bodhi-server" in str(refused.value)
        assert store.get("apps/deployments", "bodhi", "bodhi-server")["spec"] == before
        assert store.find("apps/deployments", "bodhi", "bodhi-server-canary") is None
