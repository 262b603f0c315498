"""How a real run finds its cluster, Prometheus and Slack: ``PhasegateSettings`` and the
run context built from them — the one place real adapters are made.

Design decisions:

* One pydantic-settings class, env prefix ``PHASEGATE_``, a description on every field (as
  the Prefect integrations do), so ``phasegate doctor`` and a reader of the worker manifest
  see the same names. Prometheus keeps its adapter's own ``PrometheusSettings`` (env
  ``PHASEGATE_PROMETHEUS_*``) as a nested field instead of a copy of its fields here.
* Slack is configured as the adapter already reads it (``SLACK_BOT_TOKEN``,
  ``SLACK_WEBHOOK_URL``, ``SLACK_API_URL``, ``SLACK_CHANNEL``): ``make_notifier`` is the one
  place that decides bot, webhook or console. The channel and the on-call mention belong to
  the plan, so ``context_from_settings`` takes the plan when the caller has it.
* Secrets are ``SecretStr`` (the model's repr shows ``**********``) or live in a Prefect
  Secret block named here; a block is read only when the secret is not set directly, and
  only by ``prometheus_settings()``, so building settings or a repr never needs the
  Prefect API.
* Connections are not opened here: the Kubernetes client reads its kubeconfig, the
  Prometheus session and the Slack client connect on first use. ``phasegate doctor`` is
  where they are tried.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.adapters.prometheus import PrometheusProvider, PrometheusSettings
from phasegate.adapters.slack import load_secret, make_notifier
from phasegate.checkroute import DEFAULT_CLUSTER_DOMAIN
from phasegate.clock import RealClock
from phasegate.notify import Notifier
from phasegate.plan import RolloutPlan
from phasegate.runctx import Pacing, RunContext


class PhasegateSettings(BaseSettings):
    """Where a real rollout's cluster, Prometheus and Slack are; read from ``PHASEGATE_*``."""

    model_config = SettingsConfigDict(env_prefix="PHASEGATE_", extra="forbid", populate_by_name=True)

    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file; default: $KUBECONFIG, else ~/.kube/config. Ignored in-cluster."
    )
    kube_context: str | None = Field(default=None, description="Kubeconfig context; default: its current-context.")
    in_cluster: bool = Field(
        default=False, description="Use the pod's service account (set in flow-run pods of the Kubernetes work pool)."
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace `phasegate doctor` checks RBAC in when no plan is given; default: the kubeconfig "
        "context's namespace (in a pod: the service account's), else 'default'.",
    )
    prometheus: PrometheusSettings = Field(
        default_factory=PrometheusSettings,
        description="Prometheus URL, auth and TLS, from PHASEGATE_PROMETHEUS_* (see PrometheusSettings).",
    )
    prometheus_secret_block: str | None = Field(
        default=None,
        description="Prefect Secret block holding the Prometheus bearer token, or the basic-auth password when "
        "PHASEGATE_PROMETHEUS_USERNAME is set; used only if that secret is not set directly.",
    )
    slack_secret_block: str | None = Field(
        default=None,
        description="Prefect Secret block holding the Slack bot token when the plan names none and "
        "SLACK_BOT_TOKEN is unset.",
    )
    ui_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ui_url", "PHASEGATE_UI_URL", "PREFECT_UI_URL"),
        description="Prefect UI base URL for links in notifications; default: what Prefect derives from its API URL.",
    )
    check_route: Literal["auto", "direct", "api-proxy"] = Field(
        default="auto",
        description="How smoke and load checks whose URL names a cluster Service (<svc>.<ns>.svc) are sent: "
        "'auto' goes through the API server's service proxy unless in-cluster, 'direct' always requests the URL "
        "(a laptop on the cluster's network and DNS), 'api-proxy' always uses the proxy.",
    )
    cluster_domain: str = Field(
        default=DEFAULT_CLUSTER_DOMAIN, description="The cluster's DNS domain, for <svc>.<ns>.svc.<domain> URLs."
    )
    approval_poll_seconds: int = Field(
        default=10, ge=1, description="How often an approval or checklist pause checks for an answer, in seconds."
    )

    def prometheus_settings(self) -> PrometheusSettings:
        """The Prometheus settings with the Secret block's value filled in, if one is named."""
        prom = self.prometheus
        if not self.prometheus_secret_block:
            return prom
        if prom.username is not None:
            if prom.password is not None:
                return prom
            secret = {"password": SecretStr(load_secret(self.prometheus_secret_block))}
        else:
            if prom.bearer_token is not None:
                return prom
            secret = {"bearer_token": SecretStr(load_secret(self.prometheus_secret_block))}
        return prom.model_copy(update=secret)

    def cluster(self, **options: Any) -> KubernetesCluster:
        """The Kubernetes adapter for the configured cluster (``options`` go to ``KubernetesCluster``)."""
        if self.in_cluster:
            return KubernetesCluster.in_cluster(**options)
        path = str(self.kubeconfig) if self.kubeconfig else None
        return KubernetesCluster.from_kubeconfig(path, self.kube_context, **options)

    def uses_service_proxy(self) -> bool:
        """Whether checks naming a Service go through the API server: outside the cluster
        its DNS names do not resolve (``phasegate.checkroute``)."""
        if self.check_route == "auto":
            return not self.in_cluster
        return self.check_route == "api-proxy"

    def notifier(self, channel: str | None, mention: str | None = None, secret_block: str | None = None,
                 env: Mapping[str, str] = os.environ) -> Notifier:
        """``make_notifier`` with this configuration's Secret block as the token's last resort."""
        return make_notifier(channel, mention, secret_block or self.slack_secret_block, env)

    def plan_notifier(self, plan: RolloutPlan | None, env: Mapping[str, str] = os.environ) -> Notifier:
        slack = plan.notifications.slack if plan is not None else None
        if slack is None:
            return self.notifier(None, env=env)
        return self.notifier(slack.channel, slack.mention_on_critical, slack.token_secret_block, env)


def _prefect_ui_url() -> str | None:
    # Prefect derives the UI URL from PREFECT_API_URL when PREFECT_UI_URL is unset.
    from prefect.settings import get_current_settings

    return get_current_settings().ui_url


def context_from_settings(
    plan: RolloutPlan | None = None, settings: PhasegateSettings | None = None
) -> RunContext:
    """The run context of a real run: the configured cluster, Prometheus and Slack on a ``RealClock``.

    Without ``plan`` the notifier has no channel or mention from a plan: a Slack bot then
    needs ``SLACK_CHANNEL``, or ``make_notifier`` refuses (a setup error, raised here).
    """
    settings = settings if settings is not None else PhasegateSettings()
    cluster = settings.cluster()
    return RunContext(
        cluster=cluster,
        metrics=PrometheusProvider.from_settings(settings.prometheus_settings()),
        notifier=settings.plan_notifier(plan),
        clock=RealClock(),
        pacing=Pacing(approval_poll_seconds=settings.approval_poll_seconds),
        ui_url=settings.ui_url or _prefect_ui_url(),
        service_proxy=cluster if settings.uses_service_proxy() else None,
        cluster_domain=settings.cluster_domain,
    )
