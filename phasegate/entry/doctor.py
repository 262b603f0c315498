"""``phasegate doctor``, ``phasegate checklist`` and ``phasegate run``: the commands that touch a real cluster.

Design decisions:

* ``doctor`` reports, it never stops at the first problem: every check runs and says what
  is configured (which kubeconfig or service account, which Prometheus URL and auth kind,
  which kind of Slack notifier) and whether it works, so one run shows everything to fix.
  Each check catches everything its adapter can raise, because a crash would hide the
  checks after it.
* The checks are the ones a rollout's preflight runs, done without a plan if need be:
  the cluster answers, runs a Kubernetes version the adapter supports
  (``MIN_SERVER_VERSION``), and RBAC grants every ``required_permissions`` entry (a
  SelfSubjectAccessReview each), Prometheus evaluates ``vector(1)`` (the adapter's
  ``is_online`` query, run directly to keep its reason), Slack's ``auth.test``. With a plan,
  also every namespace the plan's phases use and its target Deployment.
* Secrets never reach the terminal: the adapters already scrub their messages, and every
  detail is scrubbed once more here against each secret the configuration holds.
* The cluster is asked with few retries: a doctor should answer in seconds, while a
  rollout's adapter keeps retrying for as long as a flaky API server needs.
* Both commands belong to the entry layer (``run`` builds the run context from settings
  and starts the rollout flow); the Prefect import waits until a check or ``run`` needs
  it, so ``--help`` starts fast.
* The Prefect API is checked first, by ``doctor`` and by ``run`` before anything else: a
  rollout lasts days and waits for approvals in the Prefect UI, so a run on the temporary
  server Prefect starts when ``PREFECT_API_URL`` is unset is refused, not started.
* ``--prefect-yaml`` adds the work pool and deployments that file declares, as the Prefect
  API in force has them. A pool that no worker polls fails: the scheduled reviews, the
  sign-off and the runbooks launched from the UI would wait there, silently, for weeks.
  It is asked for, not assumed from the current directory: ``phasegate run`` needs neither.
* ``run`` exits as ``cli.py`` documents: 0 promoted, 3 rolled back, 4 halted; a refused
  preflight or a held lock is bad input (2) with nothing deployed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import typer

# A module, not names: cli.py imports this module to register its commands.
from phasegate import gates, runctx, selectors
from phasegate.adapters.kubernetes import MIN_SERVER_VERSION, KubernetesCluster
from phasegate.adapters.prometheus import PrometheusProvider
from phasegate.adapters.slack import (
    ENV_BOT_TOKEN,
    ENV_WEBHOOK_URL,
    SlackBotNotifier,
    SlackWebhookNotifier,
)
from phasegate.checkroute import Route
from phasegate.entry import clikit as cli
from phasegate.entry.settings import PhasegateSettings, context_from_settings
from phasegate.plan import RolloutPlan
from phasegate.ports import TargetRef

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# auth.test needs no channel; without a plan the real one is only known at run time.
_CHANNEL_FROM_PLAN = "(from the plan at run time)"
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class Check:
    """One thing a real run needs, and whether it is there."""

    name: str
    ok: bool
    detail: str


def doctor(settings: PhasegateSettings, plan: RolloutPlan | None = None,
           env: Mapping[str, str] = os.environ, prefect_yaml: Path | None = None,
           plan_path: Path | None = None) -> list[Check]:
    """Every check, in order: Prefect API (with ``prefect_yaml``, its work pools and deployments),
    cluster, RBAC per namespace, targets and the route of each smoke/load check (with a plan;
    ``plan_path`` for the lines problems name), Prometheus, Slack."""
    checks = [prefect_api_check()]
    if prefect_yaml is not None and checks[0].ok:
        checks.extend(deployment_checks(prefect_yaml))
    checks += [*_cluster_checks(settings, plan, plan_path), _prometheus_check(settings)]
    if plan is not None and checks[-1].ok:
        checks.extend(_series_checks(settings, plan))
    checks.append(_slack_check(settings, plan, env))
    secrets = _secrets(settings, env)
    return [replace(c, detail=_scrub(c.detail, secrets)) for c in checks]


def prefect_api_check() -> Check:
    """The Prefect API a real run records itself in and pauses on for approvals, which must
    outlive the run: without ``PREFECT_API_URL`` (environment or Prefect profile) Prefect
    would start a temporary server that dies with the process, approval forms and all."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return Check("prefect api", False, "PREFECT_API_URL is not set: a rollout would run on a temporary Prefect "
                     "server that dies with this process, its approvals with it. Start one (`prefect server start`) "
                     "and export PREFECT_API_URL=http://127.0.0.1:4200/api, or use Prefect Cloud")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            return Check("prefect api", False, f"{url}: {_describe(problem)}")
        try:
            version = client.api_version()
        except Exception as exc:
            return Check("prefect api", False, f"{url}: {_describe(exc)}")
    return Check("prefect api", True, f"{url}: online (server {version})")


def deployment_checks(prefect_yaml: Path) -> list[Check]:
    """Each work pool ``prefect_yaml`` names exists, is not paused and has a worker polling it;
    each deployment it declares is registered on the Prefect API, on the pool it names."""
    import yaml

    try:
        spec = yaml.safe_load(prefect_yaml.read_text()) or {}
        declared = {d["name"]: (d.get("work_pool") or {}).get("name") for d in spec.get("deployments") or []}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        return [Check("deployments", False, f"{prefect_yaml}: cannot read its deployments: {_describe(exc)}")]
    try:
        return _deployment_checks(prefect_yaml, declared)
    except Exception as exc:  # an API error must not hide the cluster, Prometheus and Slack checks
        return [Check("deployments", False, f"{prefect_yaml}: {_describe(exc)}")]


def _deployment_checks(prefect_yaml: Path, declared: dict[str, str | None]) -> list[Check]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.objects import WorkPoolStatus
    from prefect.exceptions import ObjectNotFound

    checks = []
    with get_client(sync_client=True) as client:
        for pool in sorted({p for p in declared.values() if p}):
            try:
                found = client.read_work_pool(pool)
            except ObjectNotFound:
                checks.append(Check(f"work pool {pool}", False, f"not found: `prefect work-pool create {pool} "
                                    f"--type process`, then `prefect worker start --pool {pool}`"))
                continue
            if found.is_paused or found.status == WorkPoolStatus.PAUSED:
                checks.append(Check(f"work pool {pool}", False, f"paused: `prefect work-pool resume {pool}`"))
            elif found.status != WorkPoolStatus.READY:
                checks.append(Check(f"work pool {pool}", False, "no worker is polling it: scheduled reviews, the "
                                    "sign-off and runbooks started from the UI would wait there; "
                                    f"`prefect worker start --pool {pool}`"))
            else:
                checks.append(Check(f"work pool {pool}", True, f"{found.type}, a worker is polling it"))
        registered = {d.name: d.work_pool_name for d in client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=sorted(declared))),
            limit=max(len(declared), 1) * 4)}
    missing = sorted(set(declared) - set(registered))
    elsewhere = sorted(f"{name} (on {registered[name] or 'no pool'}, not {pool})" for name, pool in declared.items()
                       if name in registered and pool and registered[name] != pool)
    if missing or elsewhere:
        problems = ([f"not registered: {', '.join(missing)}"] if missing else []) + (
            [f"on another pool: {', '.join(elsewhere)}"] if elsewhere else [])
        return [*checks, Check("deployments", False, f"{prefect_yaml}: {'; '.join(problems)} "
                               f"(`prefect deploy --all` from {prefect_yaml.resolve().parent})")]
    return [*checks, Check("deployments", True, f"{prefect_yaml}: all {len(declared)} registered")]


def _secrets(settings: PhasegateSettings, env: Mapping[str, str]) -> list[str]:
    prom = settings.prometheus
    values = [s.get_secret_value() for s in (prom.bearer_token, prom.password) if s is not None]
    values += [env[k] for k in (ENV_BOT_TOKEN, ENV_WEBHOOK_URL, "PREFECT_API_KEY") if env.get(k)]
    return sorted((v for v in values if v), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cluster_source(settings: PhasegateSettings) -> str:
    if settings.in_cluster:
        return "in-cluster service account"
    where = f"kubeconfig {settings.kubeconfig}" if settings.kubeconfig else "default kubeconfig"
    return where + (f", context {settings.kube_context}" if settings.kube_context else "")


def _default_namespace(settings: PhasegateSettings) -> str:
    """The namespace a ``kubectl`` with the same configuration would use."""
    if settings.namespace:
        return settings.namespace
    if settings.in_cluster:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.exists() else "default"
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(
        config_file=str(settings.kubeconfig) if settings.kubeconfig else None
    )
    if settings.kube_context:
        active = next((c for c in contexts if c["name"] == settings.kube_context), active)
    return str((active.get("context") or {}).get("namespace") or "default")


def plan_targets(plan: RolloutPlan) -> list[TargetRef]:
    """The production target first, then each other namespace the plan's phases deploy to."""
    t = plan.target
    namespaces = dict.fromkeys([t.namespaces.production, *(plan.namespace(p) for p in plan.phases)])
    return [TargetRef(ns, t.deployment, t.container) for ns in namespaces]


def _cluster_checks(settings: PhasegateSettings, plan: RolloutPlan | None,
                    plan_path: Path | None = None) -> list[Check]:
    source = _cluster_source(settings)
    try:
        cluster = settings.cluster(attempts=2, backoff=0.2, request_timeout=(3.0, 10.0))
    except Exception as exc:  # a missing or broken kubeconfig must not hide the other checks
        return [Check("cluster", False, f"{source}: cannot load: {_describe(exc)}")]
    try:
        return _cluster_checks_with(cluster, source, settings, plan, plan_path)
    finally:
        cluster.close()


def _cluster_checks_with(cluster: KubernetesCluster, source: str, settings: PhasegateSettings,
                         plan: RolloutPlan | None, plan_path: Path | None = None) -> list[Check]:
    where = f"{source} ({cluster.api.configuration.host})"
    try:
        targets = plan_targets(plan) if plan is not None else None
        namespaces = [t.namespace for t in targets] if targets else [_default_namespace(settings)]
        # The first access review doubles as the reachability check.
        if targets and plan is not None:
            flag = plan.feature_flag.configmap if plan.feature_flag else None
            missing = {t.namespace: cluster.missing_permissions(
                t, flag.name if flag else None,
                any(p.has_canary and plan.namespace(p) == t.namespace for p in plan.phases)) for t in targets}
        else:
            missing = {ns: cluster.missing_permissions(TargetRef(ns, "", ""), None, True) for ns in namespaces}
    except Exception as exc:
        return [Check("cluster", False, f"{where}: {_describe(exc)}")]
    checks = [Check("cluster", True, f"{where}: reachable"), _version_check(cluster)]
    for ns, denied in missing.items():
        detail = (f"RBAC denies {', '.join(denied)}" if denied
                  else "every permission the rollout needs is granted")
        checks.append(Check(f"rbac {ns}", not denied, detail))
    for ref in targets or []:
        try:
            stable = cluster.read_target(ref).stable
        except Exception as exc:
            checks.append(Check(f"target {ref}", False, _describe(exc)))
        else:
            checks.append(Check(f"target {ref}", True, f"{stable.image}, {stable.replicas} replicas"))
    if plan is not None:
        checks.extend(_route_checks(cluster, settings, plan, plan_path))
    return checks


def _route_checks(cluster: KubernetesCluster, settings: PhasegateSettings, plan: RolloutPlan,
                  plan_path: Path | None) -> list[Check]:
    """Each smoke/load check: the route it will take from here, or why it cannot reach its Service."""
    # Here, not at the top: tasks import Prefect, whose logging `phasegate rehearse` sets first.
    from tasks.checks import assess_checks

    try:
        planned, problems = assess_checks(plan, plan_path, proxy=cluster if settings.uses_service_proxy() else None,
                                          cluster_domain=settings.cluster_domain)
    except Exception as exc:
        return [Check("checks", False, _describe(exc))]
    out = []
    for c in planned:
        # The check's name leads the line already; its plan line stays in the detail.
        mine = [p.removeprefix(f"phases[{c.phase}].checks[{c.name}] ") for p in problems
                if p.startswith(f"{c.label}: ")]
        route = ("through the API server's service proxy" if c.route is Route.API_PROXY
                 else "directly")
        out.append(Check(f"check {c.phase}/{c.name}", not mine, "; ".join(mine) or f"{c.method} {c.url} {route}"))
    return out


def _version_check(cluster: KubernetesCluster) -> Check:
    try:
        version = cluster.server_version()
    except Exception as exc:
        return Check("kubernetes version", False, _describe(exc))
    oldest = ".".join(map(str, MIN_SERVER_VERSION))
    if version.supported:
        return Check("kubernetes version", True, f"{version}: supported ({oldest} or newer)")
    return Check("kubernetes version", False, f"{version}: older than {oldest}, the oldest version phasegate supports")


def _prometheus_check(settings: PhasegateSettings) -> Check:
    prom = settings.prometheus
    auth = "basic auth" if prom.username else "bearer token" if prom.bearer_token else "no auth"
    if settings.prometheus_secret_block:
        auth += f" (secret block {settings.prometheus_secret_block!r})"
    if prom.headers:
        auth += f", headers {', '.join(sorted(prom.headers))}"  # names only: values are secrets
    where = f"{prom.url} ({auth})"
    try:
        provider = PrometheusProvider.from_settings(settings.prometheus_settings())
    except Exception as exc:
        return Check("prometheus", False, f"{where}: {_describe(exc)}")
    try:
        value = provider.query("vector(1)")
    except Exception as exc:
        return Check("prometheus", False, f"{where}: {exc}")
    finally:
        provider.close()
    if value != 1.0:
        return Check("prometheus", False, f"{where}: vector(1) evaluated to {value}")
    return Check("prometheus", True, f"{where}: online")


def _series_checks(settings: PhasegateSettings, plan: RolloutPlan) -> list[Check]:
    """Per metric the plan reads: the labels its series carry, and any selector of the
    stable track's query that matches no series by whose-series labels (as preflight refuses)."""
    provider = PrometheusProvider.from_settings(settings.prometheus_settings())
    identity = selectors.IDENTITY | (set(plan.labels.stable) | set(plan.labels.canary) if plan.labels else set())
    phase = next((p for p in plan.phases if p.has_canary), plan.phases[0])
    scope = gates.Scope(plan.namespace(phase), plan.target.deployment, "stable")
    out = []
    try:
        for name, metric in plan.metrics.items():
            query = gates.render_metric(plan, metric.query, scope, "stable", "5m")
            try:
                carried = dict(selectors.labels_by_metric(provider, [query]))
                problems = selectors.diagnose_query(provider, query, frozenset(identity))
            except Exception as exc:
                out.append(Check(f"metric {name}", False, f"{exc}"))
                continue
            labels = "; ".join(f"{m}: {', '.join(ls) or 'no series'}" for m, ls in carried.items())
            detail = labels + ("" if not problems else " — " + " — ".join(problems))
            out.append(Check(f"metric {name}", not problems, detail))
    finally:
        provider.close()
    return out


def _slack_check(settings: PhasegateSettings, plan: RolloutPlan | None, env: Mapping[str, str]) -> Check:
    slack = plan.notifications.slack if plan is not None else None
    try:
        if slack is not None:
            notifier = settings.plan_notifier(plan, env)
        else:
            notifier = settings.notifier(_CHANNEL_FROM_PLAN, env=env)
    except Exception as exc:
        return Check("slack", False, _describe(exc))
    if isinstance(notifier, SlackBotNotifier):
        token_from = ENV_BOT_TOKEN if env.get(ENV_BOT_TOKEN) else "a Prefect Secret block"
        kind = f"bot (token from {token_from}), channel {notifier.channel}"
    elif isinstance(notifier, SlackWebhookNotifier):
        kind = f"incoming webhook ({ENV_WEBHOOK_URL})"
    else:
        kind = "not configured: notifications are printed to the console"
    status = notifier.check_auth()
    return Check("slack", status.ok, f"{kind}: {status.detail}")


def print_checks(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        cli.out.print(f"{mark}  {c.name:<{width}}  {c.detail}", markup=False, highlight=False, soft_wrap=True)


def doctor_command(
    plan: Path | None = typer.Option(None, help="Also check this plan's namespaces, targets and Slack channel."),
    prefect_yaml: Path | None = typer.Option(
        None, "--prefect-yaml", help="Also check the work pools and deployments this prefect.yaml declares."),
) -> None:
    """Show what is configured for a real run and check each connection (exit 2 naming what fails)."""
    loaded = cli.load_or_exit(plan) if plan is not None else None
    try:
        settings = PhasegateSettings()
    except ValueError as exc:  # pydantic names the field and hides a SecretStr's value
        cli.err.print(f"settings: {exc}", markup=False, highlight=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    checks = doctor(settings, loaded, prefect_yaml=prefect_yaml, plan_path=plan)
    print_checks(checks)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        cli.err.print(f"failed: {', '.join(failed)}", markup=False, highlight=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT)
    cli.out.print("all checks passed", style="green")


def run_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    image: str = typer.Option(..., help="The new image, with a tag or digest."),
    lock_timeout: float = typer.Option(30.0, help="Seconds to wait for another rollout of the target to finish."),
) -> None:
    """Roll IMAGE out to the plan's target on the configured cluster, Prometheus and Slack.

    Exit codes: 0 promoted, 3 rolled back, 4 halted for a person, 2 preflight refused (nothing deployed).
    """
    loaded = cli.load_or_exit(plan)
    api = prefect_api_check()
    if not api.ok:
        cli.err.print(f"refusing to start, nothing was deployed: {api.detail}", markup=False, highlight=False,
                      soft_wrap=True)
        raise typer.Exit(cli.EXIT_BAD_INPUT)
    try:
        ctx = context_from_settings(loaded)
    except Exception as exc:  # kubeconfig, Prometheus URL, Slack channel: setup errors, nothing deployed yet
        cli.err.print(f"cannot set up the run: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    from flows.rollout import PreflightFailed, RolloutRefused, run_rollout

    try:
        with runctx.use(ctx):
            result = run_rollout(str(plan), image, lock_timeout)
    except (PreflightFailed, RolloutRefused) as exc:
        cli.err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    cli.out.print(f"{result['rollout']}: {result['outcome']}", highlight=False)
    raise typer.Exit(cli.EXIT_BY_OUTCOME[result["outcome"]])


def checklist_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    image: str = typer.Option(..., help="The image the checklist is confirmed for (the one `run` will roll out)."),
    timeout: int = typer.Option(86400, help="Seconds to wait for a person to confirm the checklist in the Prefect UI."),
) -> None:
    """Run the plan's pre-deployment checklist for IMAGE: automatic checks, then a form in the Prefect UI.

    Exit codes: 0 every item confirmed (recorded on the Deployment, so `run` may start), 4 not confirmed,
    2 bad input or setup.
    """
    loaded = cli.load_or_exit(plan)
    # The form it waits on for up to a day, and the confirmation `run` later reads, must not
    # live on a server that dies with this process. (`rollback` is not refused: in an
    # incident a recorded rollback on a temporary server beats none.)
    api = prefect_api_check()
    if not api.ok:
        cli.err.print(f"refusing to start the checklist: {api.detail}", markup=False, highlight=False,
                      soft_wrap=True)
        raise typer.Exit(cli.EXIT_BAD_INPUT)
    try:
        ctx = context_from_settings(loaded)
    except Exception as exc:  # kubeconfig, Prometheus URL, Slack channel: setup errors
        cli.err.print(f"cannot set up the run: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    from flows.checklist import pre_deployment_checklist

    ui = ctx.ui_url
    cli.out.print(f"waiting for the checklist to be confirmed in the Prefect UI{f' ({ui})' if ui else ''}",
                  highlight=False)
    with runctx.use(ctx):
        done = pre_deployment_checklist(str(plan), image=image, timeout_seconds=timeout,
                                        poll_interval_seconds=ctx.pacing.approval_poll_seconds)
    cli.out.print("checklist confirmed" if done else "checklist NOT confirmed", highlight=False)
    raise typer.Exit(cli.EXIT_OK if done else cli.EXIT_HALTED)


def rollback_command(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    strategy: str = typer.Option(..., help="full_undo (seed Immediate) | canary_only (Partial) | feature_flag."),
    image: str | None = typer.Option(None, help="The release to roll back (default: the one recorded on the target)."),
    reason: str = typer.Option("rolled back by hand", help="Why; recorded on the release and sent to Slack."),
    requested_by: str = typer.Option(os.environ.get("USER", ""), help="Who asks for it (default: $USER)."),
    lock_timeout: float = typer.Option(10.0, help="Seconds to wait for the target's lock."),
) -> None:
    """Run one of the seed's rollback procedures on the plan's target, verified, timed against its budget.

    Exit codes: 0 rolled back and verified, 4 acted but NOT verified (a person must look), 2 refused
    (a live rollout holds the target, or nothing to roll back; nothing was done).
    """
    from phasegate.plan import Strategy

    loaded = cli.load_or_exit(plan)
    try:
        chosen = Strategy(strategy)
    except ValueError:
        cli.err.print(f"--strategy: {strategy!r} is not one of {', '.join(s.value for s in Strategy)}", markup=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    try:
        ctx = context_from_settings(loaded)
    except Exception as exc:  # kubeconfig, Prometheus URL, Slack channel: setup errors, nothing done yet
        cli.err.print(f"cannot set up the run: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    from flows.runbook import RunbookRefused, manual_rollback

    try:
        with runctx.use(ctx):
            report = manual_rollback(str(plan), chosen, reason, requested_by, image, lock_timeout)
    except RunbookRefused as exc:
        cli.err.print(f"refused: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(cli.EXIT_BAD_INPUT) from None
    verdict = "within" if report["within_budget"] else "OVER"
    cli.out.print(
        f"{report['release']}: {report['final_strategy']} {'verified' if report['ok'] else 'NOT verified'} in "
        f"{report['wall_seconds']:.1f} s ({verdict} the {report['budget_seconds']:.0f} s budget; "
        f"{report['plan_seconds']:.0f} s plan time)", highlight=False, markup=False,
    )
    raise typer.Exit(cli.EXIT_OK if report["ok"] else cli.EXIT_HALTED)
