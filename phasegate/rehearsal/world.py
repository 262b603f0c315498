"""The world a plan is rehearsed in, on this machine.

A ``World`` is everything a real rollout talks to, on loopback: the Kubernetes API
emulator seeded with the plan's target, the synthetic application exporting the seed's
metrics for whichever tracks the emulator runs, a real Prometheus scraping it every
second, and (optionally) a Slack-compatible server. The *real* rollout flow runs against it
on a scaled clock; an approver resumes the approval pauses through the Prefect API as a
person would (or waits for a click in the UI).

Faults come from a scenario: the app misbehaves on whichever track runs the new image; a
Prometheus outage is acted out here by stopping and restarting the server.

Everything is named from the plan, never from the seed: the namespaces, Deployment,
container, replica count and feature-flag switches of its ``target``, and the images
(``registry.example.com/<production namespace>/<container>:<tag>``, which for the seed plan
is the seed's own repository). The workload is the seed's token-refresh model when the plan
reads only its metrics and the scenario speaks its language; otherwise the one derived from
the plan's queries (``workload.derive``), levelled by an optional workload file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from phasegate import approval_form, gates
from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.clock import ScaledClock
from phasegate.durations import format_duration
from phasegate.notify import Notifier
from phasegate.plan import RolloutPlan
from phasegate.ports import MetricsProvider
from phasegate.record import ANN_PHASE, ANN_PHASE_STATE, PhaseState
from phasegate.rehearsal import workload as wl
from phasegate.rehearsal.app import SEED_FAMILIES, PodObservation, SyntheticApp, TrafficProfile
from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, ClusterEmulator, seed
from phasegate.rehearsal.prometheus import REHEARSAL_SCRAPE_SECONDS, PrometheusServer, take_early
from phasegate.rehearsal.scenarios import Resolved, Scenario, load_scenario_source, resolve
from phasegate.runctx import EventObserver, Pacing, PauseObserver, RunContext, run_in_thread

SCRAPE_SECONDS = REHEARSAL_SCRAPE_SECONDS
# Prometheus' discovery manager hands target changes on at most every 5 s, so a new pod is
# first scraped up to ~5 s after it appears in file_sd, as in a cluster (where a 5 m gate
# interval dwarfs it). The soak's warm-up covers it, or a compressed soak would spend its few
# rounds on a canary Prometheus has not seen yet: it ends as soon as Prometheus has a window
# of every ready pod (``World.until_scraped``), this long at most.
DISCOVERY_SECONDS = 5.0
DEFAULT_SPEED = 28800.0  # 8 h of plan time per second: the seed's 7-day rollout in ~25 s
# A rehearsal's gate windows hold a few seconds of traffic, not five minutes: one stray 5xx
# in a one-pod canary would already be "an error rate increase > 0.1%". Healthy means no
# background 5xx here, so only a scenario's injected errors move that gate. Tokens expire
# for 30% of requests, each with one other request waiting on its lock, so a one-pod canary
# makes ~1,200 lock attempts in a 2 s window, as a real 5-minute window holds. At 10% with
# half a waiter (300 attempts) one timeout read 0.33% and four broke the 1% trigger: a 0.2%
# share meant to break only the 99.9% success criterion fired the trigger in 1 of 3
# rehearsals; it now needs 13 timeouts where 2.4 are expected. 1000 requests a second per
# pod: a p99 read from a 2 s window is then estimated from ~20 tail requests of a two-pod
# staging, not ~8. At 200,
# staging's p99 read 10-14 ms over its own pre-deploy reading for whole runs (one noisy
# baseline shifts every round of the soak), and 577 rounds against a 20 ms bound with
# failure_limit 3 could hold a healthy release (tests/rehearsal/test_healthy_margins.py).
REHEARSAL_TRAFFIC = TrafficProfile(requests_per_replica_per_s=1000.0, error_ratio=0.0, expiry_ratio=0.3,
                                   waiters_per_expiry=1.0)
K8S_TIME_SCALE = 0.005
MIN_OUTAGE_WALL = 4.0  # a 600 s progress deadline takes 3 s of wall time


def image_repo(plan: RolloutPlan | None = None) -> str:
    """The repository of the plan's container: the emulator seeds its history (…:1.5.0 stable)."""
    if plan is None:
        return SEED_IMAGE_REPO
    return f"registry.example.com/{plan.target.namespaces.production}/{plan.target.container}"


def default_image(plan: RolloutPlan | None = None) -> str:
    """The next version after the one the emulator seeds as stable (1.5.0)."""
    return f"{image_repo(plan)}:1.6.0"


def seed_options(plan: RolloutPlan) -> dict[str, Any]:
    """``cluster.seed``'s arguments for the plan's target: its names, replicas and switches."""
    target, flag = plan.target, plan.feature_flag
    # Without a feature flag the switches are the app's own configuration, named for it.
    options: dict[str, Any] = {
        "namespaces": tuple(dict.fromkeys([target.namespaces.production, *(plan.namespace(p) for p in plan.phases)])),
        "deployment": target.deployment, "container": target.container, "image_repo": image_repo(plan),
        "configmap": f"{target.deployment}-config", "flag_key": "log_format", "env_flag": "LOG_FORMAT",
    }
    if flag and flag.configmap:
        options.update(configmap=flag.configmap.name, flag_key=flag.configmap.key)
    if flag and flag.env:
        options["env_flag"] = flag.env
    if target.replicas:
        options["replicas"] = {target.namespaces.production: target.replicas}
    return options


def prepare(plan: RolloutPlan, scenario: Scenario | str = "healthy",
            workload_file: str | Path | None = None) -> tuple[Resolved, wl.Workload | None]:
    """The scenario checked against the plan, and the derived workload if the rehearsal needs
    one; ``ScenarioError`` / ``WorkloadError`` name FILE:LINE of what is wrong."""
    if isinstance(scenario, str):
        scn, source = load_scenario_source(scenario)
    else:
        scn, source = scenario, None
    file, file_source = wl.load_workload_file(workload_file) if workload_file is not None else (None, None)
    try:
        derived: wl.Workload | None = wl.derive(plan, file)
    except wl.WorkloadError:
        if file is not None:
            raise
        derived = None
    if derived is not None and file is not None:
        wl.check_file(derived, file_source)
    seed_covers = derived is not None and {f.name for f in derived.families} <= SEED_FAMILIES
    if derived is None:
        # A query the parser does not take: the seed's model may still serve a seed-like plan.
        seed_covers = True
    resolved = resolve(scn, plan, derived, seed_covers=seed_covers and file is None, source=source)
    return resolved, derived if resolved.derived else None


@dataclass
class World:
    """The loopback stand-ins for a cluster, its workload and its monitoring."""

    plan: RolloutPlan
    image: str
    scenario: Scenario
    clock: ScaledClock
    emulator: ClusterEmulator
    app: SyntheticApp
    prometheus: PrometheusServer
    notifier: Notifier
    checks: CheckServer
    # How the plan's checks reach the workload: "loopback" (the check server, fast) or
    # "api-proxy" (through the emulator's service proxy to the pods, as a run from a laptop).
    check_route: str = "loopback"
    outage_log: list[tuple[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    # What warm_up waits for: enough samples of every seeded pod for a {{window}} of rate().
    warm_query: str = 'min(count_over_time(up{namespace!=""}[2s])) >= 4'
    _warm: threading.Event = field(default_factory=threading.Event)

    def warm_up(self, timeout: float = 30.0) -> None:
        """Until Prometheus holds a rate() window of every seeded pod, as preflight reads it.

        Most of it is Prometheus' own discovery (its managers apply new targets every 5 s), so
        ``rehearse`` starts it and does what needs no metrics (the checklist) before waiting."""
        if self._warm.is_set():
            return
        deadline = time.monotonic() + timeout
        self.prometheus.wait_for_data(self.warm_query, timeout=timeout)
        # The query holds once the pods Prometheus has found have a window; its discovery can
        # hand one namespace's pods on a tick later. Six proof worlds on 2 cores once passed
        # the query before any staging pod was scraped, and preflight read "no data" for staging.
        self.until_scraped(max(0.0, deadline - time.monotonic()))
        self._warm.set()

    def observe(self) -> list[PodObservation]:
        """What runs where: the emulator's pods of the target's Deployments, as they are."""
        plan, store = self.plan, self.emulator.store
        production = store.peek("apps/deployments", plan.target.namespaces.production, plan.target.deployment)
        phase = ((production or {}).get("metadata", {}).get("annotations") or {}).get(ANN_PHASE)
        workloads = {plan.target.deployment, plan.target.deployment + "-canary"}
        service = plan.target.service or plan.target.deployment
        flag = self.plan.feature_flag
        out = []
        for ns in sorted({plan.namespace(p) for p in plan.phases}):
            flag_cm = self._configmap_flag(ns)
            for pod in store.list("pods", ns):
                if _owning_deployment(store, ns, pod) not in workloads:
                    continue
                container = next((c for c in pod["spec"].get("containers") or [] if c["name"] == plan.target.container),
                                 None)
                status = pod.get("status") or {}
                # Discovered once it has an address (the process runs and serves /metrics);
                # traffic only once Ready, as a Service sends it.
                if container is None or not status.get("podIP"):
                    continue
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                env_on = flag is None or flag.env is None or env.get(flag.env) != flag.off_value
                conditions = status.get("conditions") or []
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
                out.append(PodObservation(
                    namespace=ns, name=pod["metadata"]["name"], image=container["image"], ready=ready,
                    flag_enabled=env_on and flag_cm, phase=phase, ip=status["podIP"],
                    labels=tuple(sorted((pod["metadata"].get("labels") or {}).items())),
                    container=plan.target.container, service=service,
                ))
        return out

    def _configmap_flag(self, namespace: str) -> bool:
        flag = self.plan.feature_flag
        if flag is None or flag.configmap is None:
            return True
        cm = self.emulator.store.peek("configmaps", namespace, flag.configmap.name)
        return ((cm or {}).get("data") or {}).get(flag.configmap.key) != flag.off_value

    def _act_out_outage(self) -> None:
        """Stop Prometheus for the scenario's outage window (plan time), then restart it.

        The outage lasts at least ``MIN_OUTAGE_WALL``: at rehearsal speed fifteen plan minutes
        are milliseconds, shorter than one gate round, and an outage nobody could observe
        tests nothing. It starts no earlier than the soak: the rehearsal's wall-time warm-up
        (which covers Prometheus' discovery of the new pods) is days of plan time, and an
        outage acted out inside it would be over before the first gate round."""
        state, stopped_at = "before", 0.0
        while not self._stop.wait(0.1):
            window = self.scenario.outage_window(self.app.phase_seen, self.app.origin)
            if window is None:
                continue
            now = self.clock.now()
            if state == "before" and now >= window[0] and self._soaking():
                self.prometheus.stop()
                stopped_at = time.time()
                self.outage_log.append(("stopped", stopped_at))
                state = "down"
            elif state == "down" and now >= window[1] and time.time() - stopped_at >= MIN_OUTAGE_WALL:
                self.prometheus.restart()
                self.outage_log.append(("restarted", time.time()))
                return

    def _soaking(self) -> bool:
        target = self.plan.target
        d = self.emulator.store.peek("apps/deployments", target.namespaces.production, target.deployment)
        annotations = ((d or {}).get("metadata") or {}).get("annotations") or {}
        return annotations.get(ANN_PHASE_STATE) == PhaseState.SOAKING.value

    def run_context(
        self,
        *,
        approval_floor: float,
        hold_floor: float | None = None,
        on_pause: PauseObserver | None,
        on_event: EventObserver | None = None,
        metrics: MetricsProvider | None = None,
        notifier: Notifier | None = None,
    ) -> RunContext:
        """``metrics``: what the gates query; default: a provider on this world's Prometheus.
        ``notifier``: who is told; default: the world's."""
        port = self.checks.port
        cluster = KubernetesCluster.from_url(self.emulator.url, poll_interval=0.05, backoff=0.05, max_backoff=0.5)
        proxied = self.check_route == "api-proxy"
        return RunContext(
            cluster=cluster,
            metrics=metrics if metrics is not None else self.prometheus.provider(timeout=5.0),
            notifier=notifier if notifier is not None else self.notifier,
            clock=self.clock,
            pacing=replace(rehearsal_pacing(approval_floor, hold_floor), until_scraped=self.until_scraped),
            url_for_check=(lambda url: url) if proxied else (lambda url: _loopback(url, port)),
            service_proxy=cluster if proxied else None,
            on_pause=on_pause,
            ui_url=_prefect_ui_url(),
            on_event=on_event,
        )

    def until_scraped(self, at_most: float) -> None:
        """``Pacing.until_scraped``: return once Prometheus holds a gate window of samples of
        every Ready pod of the target and every pod the app serves (or after ``at_most``
        seconds): the warm-up then lasts as long as this discovery took, not always the 5 s it
        may take. Every pod, not only this plan's: worlds sharing one app and Prometheus may
        run their rollouts in one context."""
        deadline = time.monotonic() + at_most
        window, samples = f"{4 * SCRAPE_SECONDS:g}s", 4
        while True:
            # The cluster's pods as well as the app's targets: the app learns of a new pod on its
            # next tick, and a warm-up that ended before then left the canary unscraped (a gate
            # round with no data held a healthy rollout on a loaded machine).
            wanted = {(g["labels"]["namespace"], g["labels"]["pod"]) for g in self.app.target_groups()}
            wanted |= {(o.namespace, o.name) for o in self.observe() if o.ready}
            try:
                if wanted <= self.prometheus.scraped_for(window, samples):
                    return
            except OSError:  # Prometheus down (an outage scenario): the full warm-up, as before
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def monitoring_health(self, since_wall: float) -> dict[str, Any]:
        """How well Prometheus scraped the workload since ``since_wall``: the share of failed
        scrapes and the slowest. A world starved of CPU misses scrapes (each times out at the
        scrape interval), and a gate then reads no data or lags: a mismatch of the proof is
        then the machine's, and the report must say so rather than blame the plan."""
        span = f"{max(1, math.ceil(time.time() - since_wall))}s"
        provider = self.prometheus.provider(timeout=5.0)
        out: dict[str, Any] = {}
        # Only a scrape that ran out of time says the world was starved: one of a pod just
        # deleted (a rollback's, a canary's scaled away) fails at once until discovery drops
        # it, as on a real cluster, and is no sign of load.
        step = f"{SCRAPE_SECONDS:g}s"
        slow = f"scrape_duration_seconds >= {0.9 * SCRAPE_SECONDS:g}"
        try:
            total = provider.query(f"sum(count_over_time(up[{span}]))")
            ok = provider.query(f"sum(sum_over_time(up[{span}]))")
            points = provider.query(f"sum(count_over_time(up[{span}:{step}]))")
            timed_out = provider.query(f"sum(count_over_time(((up == 0) and ({slow}))[{span}:{step}])) or vector(0)")
            out = {"scrapes": int(total), "failed_share": round(1 - ok / total, 4) if total else 0.0,
                   "timed_out_share": round(timed_out / points, 4) if points else 0.0,
                   "slowest_scrape_s": round(provider.query(f"max(max_over_time(scrape_duration_seconds[{span}]))"), 3),
                   "scrape_timeout_s": SCRAPE_SECONDS}
        except Exception as exc:  # a world whose Prometheus is down (an outage scenario) says so
            out = {"unknown": str(exc)[:120]}
        finally:
            provider.close()
        return out

    def fault_onsets_wall(self) -> list[float]:
        """Wall times at which the scenario's faults started (for detection timings)."""
        out = []
        for fault in self.scenario.faults:
            start = fault.starts_at(self.app.phase_seen, self.app.origin)
            if start is not None and start <= self.clock.now():
                out.append(time.time() - self.clock.to_wall(self.clock.now() - start))
        return out


class CheckServer:
    """Answers the plan's smoke and load checks on loopback, as the Service would for healthy pods."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as a real Service's pods speak: over HTTP/1.0 every one of a load
            # check's 1000 requests was a new connection and a new server thread, seconds of
            # a rehearsal's start on 2 cores.
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes; with Nagle on, the body waits for the
            # client's delayed ACK of the headers: 40 ms a request on a kept-alive connection,
            # a 1000-request load check's seconds. Servers a Service runs (Go's net/http,
            # uvicorn) set TCP_NODELAY.
            disable_nagle_algorithm = True

            def answer(self, with_body: bool) -> None:
                # On a kept-alive connection a request's body must be read and a HEAD's
                # answer must carry none, or the next request on it is misread.
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self.answer(True)

            do_POST = do_PUT = do_GET

            def do_HEAD(self) -> None:
                self.answer(False)

            def log_message(self, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            # socketserver's listen backlog is 5: a load check's 100 simultaneous connects
            # overflow it, and on a busy machine the dropped handshakes surface as read
            # timeouts that fail a healthy phase. A real Service's backlog is far larger.
            request_queue_size = 1024
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="check-server", daemon=True)

    def __enter__(self) -> CheckServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def rehearsal_pacing(approval_floor: float = 0.0, hold_floor: float | None = None) -> Pacing:
    """The wall-time floors a rehearsal's compressed clock needs (``runctx.Pacing``)."""
    return Pacing(
        min_hold_wall=hold_floor,
        min_interval_wall=SCRAPE_SECONDS,
        min_window_wall=4 * SCRAPE_SECONDS,
        min_warmup_wall=4 * SCRAPE_SECONDS + DISCOVERY_SECONDS,
        min_soak_wall=6 * SCRAPE_SECONDS,
        min_approval_wall=approval_floor,
        approval_poll_seconds=1,
    )


def clamping_report(plan: RolloutPlan, speed: float, pacing: Pacing) -> list[dict[str, Any]]:
    """Per phase, what its gate interval, trigger interval, windows and soak become at ``speed``.

    At 28800x a 5 m interval would be 10 ms of wall time: rounds faster than a scrape re-read
    the same samples, so the rehearsal clamps each to its pacing floor, as flows/phase.py and
    tasks/metrics.py apply them (the larger of the scaled plan value and the floor). The user
    reads here how many rounds the soak really has and how much traffic each window holds.
    """
    out = []
    for phase in plan.phases:
        interval = phase.interval.total_seconds()
        interval_run = max(interval, speed * pacing.min_interval_wall)
        soak = phase.soak.total_seconds()
        soak_run = max(soak, pacing.min_soak_wall * speed)
        trigger = phase.trigger_every.total_seconds()
        windows = sorted({gates.window_seconds(g, phase) for g in phase.gates()})
        out.append({
            "phase": phase.name,
            "interval": interval, "interval_run": interval_run, "interval_wall": interval_run / speed,
            "interval_clamped": interval_run > interval,
            "trigger_interval": trigger, "trigger_wall": max(trigger / speed, pacing.min_interval_wall),
            "trigger_clamped": trigger / speed < pacing.min_interval_wall,
            "windows": [{"window": w, "wall": max(w / speed, pacing.min_window_wall),
                         "clamped": w / speed < pacing.min_window_wall} for w in windows],
            "soak": soak, "soak_run": soak_run,
            "rounds": int(-(-soak_run // interval_run)) + 1, "plan_rounds": int(-(-soak // interval)) + 1,
        })
    return out


def clamping(plan: RolloutPlan, speed: float) -> list[str]:
    """``clamping_report`` as lines for the terminal; phases paced alike share a line."""
    def d(seconds: float) -> str:
        return format_duration(timedelta(seconds=seconds)) if seconds >= 1 else f"{seconds * 1000:.0f}ms"

    lines: dict[str, list[str]] = {}
    for c in clamping_report(plan, speed, rehearsal_pacing()):
        parts = []
        if c["interval_clamped"]:
            parts.append(f"gate interval {d(c['interval'])} clamped to {d(c['interval_run'])} of plan time "
                         f"({c['interval_wall']:g}s wall, one scrape): {c['rounds']} rounds per "
                         f"{d(c['soak_run'])} soak, not {c['plan_rounds']}")
        else:
            parts.append(f"gate interval {d(c['interval'])} ({c['interval_wall']:g}s wall): {c['rounds']} rounds")
        if c["trigger_clamped"]:
            parts.append(f"triggers every {c['trigger_wall']:g}s wall, not {d(c['trigger_interval'] / speed)}")
        for w in c["windows"]:
            if w["clamped"]:
                parts.append(f"window {d(w['window'])} reads {w['wall']:g}s of samples, not {d(w['window'] / speed)}")
        lines.setdefault("; ".join(parts), []).append(c["phase"])
    return [f"pacing at {speed:g}x — {', '.join(phases)}: {text}" for text, phases in lines.items()]


def _owning_deployment(store: Any, namespace: str, pod: dict[str, Any]) -> str | None:
    """Pod → its ReplicaSet → that ReplicaSet's Deployment, by controller references."""
    def controller(obj: dict[str, Any], kind: str) -> str | None:
        refs = obj["metadata"].get("ownerReferences") or []
        return next((r["name"] for r in refs if r.get("controller") and r.get("kind") == kind), None)

    rs_name = controller(pod, "ReplicaSet")
    rs = store.peek("apps/replicasets", namespace, rs_name) if rs_name else None
    return controller(rs, "Deployment") if rs is not None else None


def _pod_http(app: SyntheticApp, namespace: str, pod: str, port: int) -> str | None:
    """Where the synthetic app serves ``pod``'s container port, if it serves it: the app's
    one HTTP port (8080, named ``http``), for pods it has seen start."""
    if port != 8080 or not app.serves(namespace, pod):
        return None
    return f"http://{app.address}/pods/{namespace}/{pod}"


def _loopback(url: str, port: int) -> str:
    """Checks in the plan address the cluster's Service; here the synthetic app answers them."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(("http", f"127.0.0.1:{port}", parts.path or "/", parts.query, ""))


def notifier_for(plan: RolloutPlan) -> Notifier:
    """As in production: a Slack bot or webhook when SLACK_* say so (a rehearsal can point
    SLACK_API_URL at a loopback Slack server), else the console."""
    from phasegate.adapters.slack import make_notifier

    slack = plan.notifications.slack
    return make_notifier(slack.channel if slack else None, slack.mention_on_critical if slack else None)


@contextlib.contextmanager
def world(
    plan: RolloutPlan,
    *,
    image: str | None = None,
    scenario: Scenario | str = "healthy",
    speed: float = DEFAULT_SPEED,
    notifier: Notifier | None = None,
    ready_delay: float = 0.05,
    prometheus_auth: tuple[str, str] | None = None,
    workload_file: str | Path | None = None,
    check_route: str = "loopback",
    warm: bool = True,
) -> Iterator[World]:
    """Start the loopback world for ``plan``; everything is stopped on exit.

    ``prometheus_auth``: (user, password) the world's Prometheus demands, as one behind
    basic auth in production does. ``workload_file``: levels for the derived workload.
    ``check_route``: ``World.check_route``. ``warm=False``: yield before Prometheus has
    samples; ``World.warm_up`` waits for them (``run_in`` does, before the rollout)."""
    resolved, derived = prepare(plan, scenario, workload_file)
    scn = resolved.scenario
    new_image = image or default_image(plan)
    clock = ScaledClock(speed)
    # Kubernetes durations (progressDeadlineSeconds) are compressed less than plan time: at
    # the plan's speed a 10-minute deadline would expire before any pod could be ready.
    emulator = ClusterEmulator(ready_delay=ready_delay, time_scale=K8S_TIME_SCALE)
    if scn.bad_image:
        emulator.behaviour.bad_images.add(new_image)
    with contextlib.ExitStack() as stack:
        stack.enter_context(emulator)
        seed(emulator, **seed_options(plan))
        holder: dict[str, World] = {}
        # The command may have started it already (prometheus.start_early says why).
        prometheus = (take_early(SCRAPE_SECONDS, prometheus_auth)
                      or PrometheusServer(scrape_interval=SCRAPE_SECONDS, basic_auth=prometheus_auth))
        stack.callback(prometheus.close)
        # Prometheus discovers the pods as prometheus-operator would (file_sd from the
        # emulator's pods): a deleted pod leaves discovery and its series go stale.
        app = SyntheticApp(
            lambda: holder["world"].observe() if "world" in holder else [], new_image, scn, clock,
            profile=REHEARSAL_TRAFFIC, tick_seconds=0.1, on_targets=prometheus.set_target_groups,
            workload=derived, resolved=resolved,
        )
        stack.enter_context(app)
        # The service proxy reaches a pod's HTTP port where the synthetic app serves that pod.
        emulator.api.pod_http = functools.partial(_pod_http, app)
        prometheus.start()
        checks = stack.enter_context(CheckServer())
        w = World(plan, new_image, scn, clock, emulator, app, prometheus, notifier or notifier_for(plan), checks,
                  check_route)
        holder["world"] = w
        series = "api_response_time_ms_count" if derived is None else 'up{namespace!=""}'
        w.warm_query = f"min(count_over_time({series}[{4 * SCRAPE_SECONDS:g}s])) >= 4"
        if warm:
            w.warm_up()
        outage = threading.Thread(target=w._act_out_outage, name="outage", daemon=True)
        outage.start()
        stack.callback(w._stop.set)
        yield w


class Approver:
    """Answers approval pauses through the Prefect API, as a person in the UI would.

    Modes: ``auto`` approves every phase that passed, with every criterion ticked, and
    leaves a *held* phase (criteria unmet, no trigger) unanswered — that judgement is a
    person's, so the pause times out into the plan's action; ``reject@PHASE`` rejects that
    phase; ``timeout@PHASE`` leaves that phase unanswered; ``ui`` answers nothing and
    prints where to click.
    """

    def __init__(self, mode: str = "auto", *, approver: str = "rehearsal", say: Callable[[str], None] = print) -> None:
        self.mode, _, self.phase = mode.partition("@")
        needs_phase = self.mode in ("reject", "timeout")
        if self.mode not in ("auto", "reject", "timeout", "ui") or (needs_phase and not self.phase):
            raise ValueError(f"--approve must be auto, reject@PHASE, timeout@PHASE or ui, not {mode!r}")
        self.approver = approver
        self.say = say
        self.answers: list[dict[str, Any]] = []
        # How long to wait for a pause to appear before answering it; run_in sets it to the
        # pause window, since under load a run can take minutes to reach Paused.
        self.patience = 120.0
        # How often to look for the pause; a hundred waiting approvers at 4 Hz are load of their own.
        self.poll_seconds = 0.25

    @property
    def ui_url(self) -> str | None:
        # Read when first needed, not in __init__: the command builds an Approver to check
        # --approve before it starts the temporary API, and reading a Prefect setting imports
        # Prefect (3 s on 2 cores) that the API's start would then wait behind.
        return _prefect_ui_url()

    def __call__(self, flow_run_id: str, phase: str, fields: list[str], step: str = "advance") -> None:
        if self.mode == "ui":
            where = f"{self.ui_url}/runs/flow-run/{flow_run_id}" if self.ui_url else f"flow run {flow_run_id}"
            self.say(f"waiting for approval of {phase} in the Prefect UI: {where}")
            return
        # A held phase and a halted rollout are a person's call: left to time out.
        if (self.mode == "timeout" and phase == self.phase) or step in ("hold", "halted"):
            return
        if step == "checklist":
            answer: dict[str, Any] = {f: True for f in fields if f not in ("confirmed_by", "metadata")}
            answer["confirmed_by"] = self.approver
            # With this thread's context: Prefect's settings (which API) live in a ContextVar too.
            run_in_thread(self._resume, flow_run_id, answer, name="approver")
            return
        decision = "reject" if self.mode == "reject" and phase == self.phase else "approve"
        criteria = [f for f in fields if f.startswith("criterion_")]
        answer = approval_form.answer(decision, self.approver, f"rehearsal: {decision}", [True] * len(criteria))
        run_in_thread(self._resume, flow_run_id, answer, name="approver")

    def _resume(self, flow_run_id: str, answer: dict[str, Any]) -> None:
        """Wait for the pause, then answer it; a busy API (SQLite 'database is locked' under
        many runs) is retried, as a person would click again, until the deadline."""
        from prefect.client.orchestration import get_client
        from prefect.context import AsyncClientContext, SyncClientContext
        from prefect.flow_runs import resume_flow_run

        # This thread runs in a copy of the paused flow's context, settings and all, which
        # also holds the flow's own client: get_client() would hand that one out and closing
        # it here would close it under the flow (rehearse --prove's concurrent cases saw
        # "cannot be started again after closing"). Clients of its own, in this copy only.
        SyncClientContext.__var__.set(None)  # type: ignore[arg-type]  # "no client here", as unset reads
        AsyncClientContext.__var__.set(None)  # type: ignore[arg-type]
        deadline = time.time() + self.patience
        while time.time() < deadline:
            try:
                with get_client(sync_client=True) as client:
                    run = client.read_flow_run(UUID(flow_run_id))
                if run.state is not None and run.state.is_paused():
                    resume_flow_run(UUID(flow_run_id), run_input=answer)
                    self.answers.append(answer)
                    return
            except Exception as exc:
                if "Validation failed" in str(exc):
                    # The run is paused, but not for the form this answer fills: the pause it was
                    # meant for timed out and the run asks something else now (a halted
                    # rollout's rollback or hand-over). Answering that is not this approver's call.
                    self.say(f"approver: flow run {flow_run_id} now waits on another form; not answered")
                    return
                self.say(f"approver: retrying after {type(exc).__name__}: {str(exc)[:160]}")
            time.sleep(self.poll_seconds)
        self.say(f"approver: flow run {flow_run_id} never paused within {self.patience:.0f}s; not answered")


def _prefect_ui_url() -> str | None:
    from prefect.settings import PREFECT_UI_URL

    url = PREFECT_UI_URL.value()
    return str(url).rstrip("/") if url else None


def timings(report: dict[str, Any], w: World) -> dict[str, Any]:
    """Fault onset → rollback started → rollback completed, in wall and in plan seconds.

    Plan seconds are what the seed's budgets speak of ("< 5 minutes"); in a rehearsal they
    include the floors a compressed clock needs (a scrape, two samples for rate()), so they
    are an upper bound of what the same plan does at real speed.
    """
    onsets = w.fault_onsets_wall()
    rb = report.get("rollback") or {}
    out: dict[str, Any] = {"fault_onsets_wall": onsets, "outages": w.outage_log}
    if rb and onsets:
        onset = min(onsets)
        onset_plan = w.clock.now() - (time.time() - onset) * w.clock.speed
        out.update(
            onset_wall=onset,
            detected_after=rb["started_wall"] - onset,
            completed_after=rb["completed_wall"] - onset,
            detected_after_plan=rb["started_plan"] - onset_plan,
            completed_after_plan=rb["completed_plan"] - onset_plan,
            budget=SCRAPE_SECONDS + max(w.clock.to_wall(min(p.trigger_every.total_seconds() for p in w.plan.phases)),
                                        SCRAPE_SECONDS),
        )
    return out
