"""PhasegateSettings: environment names, secrets kept out of reprs, the Runtime they build.

Nothing here connects anywhere: adapters are built, not used, so no server is started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

import phasegate.entry.settings
from phasegate.adapters.console import ConsoleNotifier
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.adapters.slack import SlackBotNotifier, SlackConfigError
from phasegate.clock import RealClock
from phasegate.entry.settings import PhasegateSettings, context_from_settings
from phasegate.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
SEED_PLAN = ROOT / "deployments/plans/token-refresh-locking.yaml"
BEARER = "prom-bearer-0123456789"
PASSWORD = "prom-password-0123456789"
SLACK_TOKEN = "xoxb-settings-test-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the variables it sets."""
    for name in list(os.environ):
        if name.startswith(("PHASEGATE_", "SLACK_", "KUBECONFIG")) or name == "PREFECT_UI_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig for a server that need not exist: building the adapter does not connect."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "prod", "cluster": {"server": "https://k8s.example:6443"}},
                     {"name": "dev", "cluster": {"server": "https://dev.example:6443"}}],
        "users": [{"name": "u", "user": {"token": "kube-token-0123456789"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "u"}},
                     {"name": "dev", "context": {"cluster": "dev", "user": "u"}}],
    }))
    return path


def test_every_setting_is_described() -> None:
    fields = {**PhasegateSettings.model_fields, **PhasegateSettings.model_fields["prometheus"].default_factory.model_fields}
    assert all(f.description for f in fields.values()), [n for n, f in fields.items() if not f.description]


def test_cluster_settings_are_read_from_phasegate_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGATE_KUBECONFIG", "/etc/phasegate/kubeconfig")
    monkeypatch.setenv("PHASEGATE_KUBE_CONTEXT", "prod")
    monkeypatch.setenv("PHASEGATE_IN_CLUSTER", "true")
    monkeypatch.setenv("PHASEGATE_APPROVAL_POLL_SECONDS", "3")
    s = PhasegateSettings()
    assert (s.kubeconfig, s.kube_context, s.in_cluster, s.approval_poll_seconds) == (
        Path("/etc/phasegate/kubeconfig"), "prod", True, 3)


def test_prometheus_is_configured_by_the_adapters_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", "https://prom.example/prometheus")
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_USERNAME", "phasegate")
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_PASSWORD", PASSWORD)
    prom = PhasegateSettings().prometheus
    assert (prom.url, prom.username) == ("https://prom.example/prometheus", "phasegate")
    assert prom.password is not None and prom.password.get_secret_value() == PASSWORD


def test_phasegate_ui_url_wins_over_prefects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example")
    assert PhasegateSettings().ui_url == "https://prefect.example"
    monkeypatch.setenv("PHASEGATE_UI_URL", "https://ui.example")
    assert PhasegateSettings().ui_url == "https://ui.example"


def test_approval_poll_interval_below_one_second_is_rejected() -> None:
    with pytest.raises(ValidationError, match="approval_poll_seconds"):
        PhasegateSettings(approval_poll_seconds=0)


def test_secrets_never_appear_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_BEARER_TOKEN", BEARER)
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_PASSWORD", PASSWORD)
    s = PhasegateSettings()
    for text in (repr(s), str(s), s.model_dump_json(), repr(PrometheusProvider.from_settings(s.prometheus))):
        assert BEARER not in text and PASSWORD not in text


def test_secret_block_fills_the_bearer_token_only_when_it_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(phasegate.entry.settings, "load_secret", lambda name: loaded.append(name) or BEARER)
    s = PhasegateSettings(prometheus_secret_block="prometheus-token")
    token = s.prometheus_settings().bearer_token
    assert token is not None and token.get_secret_value() == BEARER and loaded == ["prometheus-token"]
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_BEARER_TOKEN", "set-directly-0123456789")
    assert PhasegateSettings(prometheus_secret_block="prometheus-token").prometheus_settings().bearer_token == (
        PhasegateSettings().prometheus.bearer_token)
    assert loaded == ["prometheus-token"]


def test_secret_block_is_the_basic_auth_password_when_a_username_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phasegate.entry.settings, "load_secret", lambda name: PASSWORD)
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_USERNAME", "phasegate")
    prom = PhasegateSettings(prometheus_secret_block="prometheus-password").prometheus_settings()
    assert prom.bearer_token is None
    assert prom.password is not None and prom.password.get_secret_value() == PASSWORD


def test_runtime_uses_the_kubeconfig_context_prometheus_and_a_real_clock(
        monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    monkeypatch.setenv("PHASEGATE_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("PHASEGATE_KUBE_CONTEXT", "dev")
    monkeypatch.setenv("PHASEGATE_PROMETHEUS_URL", "http://prom.example:9090")
    monkeypatch.setenv("PHASEGATE_UI_URL", "https://prefect.example")
    monkeypatch.setenv("PHASEGATE_APPROVAL_POLL_SECONDS", "30")
    rt = context_from_settings()
    assert isinstance(rt.cluster, KubernetesCluster)
    assert rt.cluster.api.configuration.host == "https://dev.example:6443"
    assert isinstance(rt.metrics, PrometheusProvider) and rt.metrics.url == "http://prom.example:9090"
    assert isinstance(rt.clock, RealClock)
    assert isinstance(rt.notifier, ConsoleNotifier)  # no Slack configured
    assert (rt.ui_url, rt.pacing.approval_poll_seconds) == ("https://prefect.example", 30)


def test_slack_channel_and_mention_come_from_the_plan(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    plan = load_plan(SEED_PLAN)
    slack = plan.notifications.slack
    assert slack is not None
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    rt = context_from_settings(plan, PhasegateSettings(kubeconfig=kubeconfig, ui_url="https://prefect.example"))
    assert isinstance(rt.notifier, SlackBotNotifier)
    assert (rt.notifier.channel, rt.notifier.mention) == (slack.channel, slack.mention_on_critical)
    assert SLACK_TOKEN not in repr(rt.notifier)


def test_without_a_plan_a_slack_bot_needs_slack_channel(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    settings = PhasegateSettings(kubeconfig=kubeconfig, ui_url="https://prefect.example")
    with pytest.raises(SlackConfigError, match="SLACK_CHANNEL"):
        context_from_settings(None, settings)
    monkeypatch.setenv("SLACK_CHANNEL", "#rollouts")
    notifier = context_from_settings(None, settings).notifier
    assert isinstance(notifier, SlackBotNotifier) and notifier.channel == "#rollouts"


@pytest.mark.parametrize(
    ("in_cluster", "route", "proxied"),
    [(False, None, True), (True, None, False), (False, "direct", False), (True, "api-proxy", True)],
)
def test_checks_go_through_the_api_servers_proxy_only_from_outside_the_cluster_unless_told(
        monkeypatch: pytest.MonkeyPatch, in_cluster: bool, route: str | None, proxied: bool) -> None:
    if route:
        monkeypatch.setenv("PHASEGATE_CHECK_ROUTE", route)
    assert PhasegateSettings(in_cluster=in_cluster).uses_service_proxy() is proxied


def test_a_kubeconfig_run_gives_checks_the_clusters_own_client_as_their_proxy(
        monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    monkeypatch.setenv("PHASEGATE_CLUSTER_DOMAIN", "corp.internal")
    rt = context_from_settings(None, PhasegateSettings(kubeconfig=kubeconfig))
    assert rt.service_proxy is rt.cluster and rt.cluster_domain == "corp.internal"
    direct = context_from_settings(None, PhasegateSettings(kubeconfig=kubeconfig, check_route="direct"))
    assert direct.service_proxy is None


def test_an_unknown_check_route_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGATE_CHECK_ROUTE", "job")
    with pytest.raises(ValueError, match="check_route"):
        PhasegateSettings()
