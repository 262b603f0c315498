"""A deployment's entry flow, as a worker starts it: no run context, only PHASEGATE_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegate.entry import deployments
from phasegate.rehearsal.cluster import ClusterEmulator
from phasegate.rehearsal.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_review_entry_flow_builds_its_context_from_settings_and_reads_the_configured_cluster(
    monkeypatch: pytest.MonkeyPatch, emulator_kubeconfig: Path, seeded_cluster: ClusterEmulator,
    disposable_prometheus: PrometheusServer,
) -> None:
    monkeypatch.setenv("PHASEGATE_KUBECONFIG", str(emulator_kubeconfig))
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", disposable_prometheus.url)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    before = len(seeded_cluster.requests)
    assert deployments.review_releases(str(SEED), "daily") == []  # nothing promoted yet
    # It asked the configured cluster for promoted releases: the settings, not a default.
    assert any("/deployments" in r.path for r in seeded_cluster.requests[before:])


def test_an_entry_flow_with_an_invalid_plan_refuses_naming_the_line(tmp_path: Path) -> None:
    from flows.rollout import PreflightFailed

    bad = tmp_path / "plan.yaml"
    bad.write_text(SEED.read_text().replace("canary_share: 100", "canary_share: 110", 1))
    with pytest.raises(PreflightFailed, match=r"plan\.yaml:\d+: phases\.\d\.canary_share: Input should be less than or equal to 100"):
        deployments.progressive_rollout(str(bad), "registry.example.com/bodhi/bodhi-server:1.6.0")
