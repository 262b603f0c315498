"""THE gate planner and THE reader: what a gate queries, and what its answer means.

The live soak (``tasks/metrics.py``), the backtest, the reviews, rollback verification and
the alert renderer all ask this module which PromQL a gate runs for which track over which
window, and turn provider answers into ``Reading``s here, so the five of them cannot drift
apart. Pure: the provider is the ``ports.MetricsProvider`` Protocol.

Design decisions:

* **Per round, per gate**: the subject query (the track running the new version), the
  baseline — the stable track's query in the same round, or the value recorded before the
  deploy — and the window in plan seconds (``GateQuery``). Turning plan seconds into a
  PromQL range is the caller's (a rehearsal scales it; a backtest does not).
* **Selecting a track by what every series has.** A stock prometheus-operator labels a
  scraped series with ``namespace``, ``pod``, ``container``, ``service``, ``endpoint``,
  ``job``, ``instance`` — never ``deployment`` and ``track`` unless the user copies pod
  labels. So ``{{pods}}`` is a regex of the track's pod names, as Flagger's templates do.
  A ReplicaSet names its pods ``<deployment>-<pod-template-hash>-<suffix>``; both the hash
  (``SafeEncodeString`` of a 32-bit FNV hash: 1–10 characters) and the suffix (5) come
  from Kubernetes' alphabet without vowels, ``bcdfghjklmnpqrstvwxz2456789``. The canary is
  the Deployment ``<deployment>-canary``. RE2 has no look-ahead, so "stable but not the
  canary" is built from the segment structure: the stable regex allows exactly two
  segments after ``<deployment>-``, a canary pod has three (and ``canary`` has vowels, so
  it cannot be a hash either). The same holds for any other Deployment ``<deployment>-x``.
  Prometheus anchors regex matchers, so the regex matches whole names only.
* **Errors are data in one place** (``reading_of``): no data → an empty ``Reading``
  (Inconclusive), any provider error → ``Reading(error=...)`` (Error), whatever the call
  (instant, point, range). A pre-deploy baseline that could not be read is recorded as its
  error, so an outage then reads as Error, never as "no data".
* **An empty answer is asked again once** (``read_round``) before it counts: the newest
  scrape may not have landed yet, and at a 5 min interval one missed sample would be a
  whole round without data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from phasegate import errors, templates
from phasegate.analysis import Measurement, Reading, evaluate
from phasegate.durations import promql_duration
from phasegate.measure import Sample, collect
from phasegate.plan import Baseline, Gate, GateKind, Phase, RolloutPlan
from phasegate.ports import CANARY, CANARY_SUFFIX, STABLE, MetricsProvider

K = TypeVar("K", bound=Hashable)

# Kubernetes' name alphabet (k8s.io/apimachinery/pkg/util/rand: no vowels, no 0/1/3).
K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_HASH = f"[{K8S_ALPHABET}]{{1,10}}"
_SUFFIX = f"[{K8S_ALPHABET}]{{5}}"
# The apiserver cuts a generateName base to 58 characters before adding 5 random ones.
MAX_GENERATE_BASE = 58
MAX_POD_HASH = 10
# Stands in for a hash that is not known (no such track yet): it cannot be one, having vowels.
NO_HASH = "unknown"
DEFAULT_WINDOW_SECONDS = 300.0


def workload(deployment: str, track: str) -> str:
    """The Deployment running ``track``."""
    return deployment + CANARY_SUFFIX if track == CANARY else deployment


def _escape(name: str) -> str:
    return re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\1", name)


def pods_regex(deployment_name: str) -> str:
    """Exactly the pods a ReplicaSet of Deployment ``deployment_name`` creates."""
    return f"{_escape(deployment_name)}-{_HASH}-{_SUFFIX}"


def any_track_pods_regex(deployment: str) -> str:
    """The pods of both tracks: what a standing alert, which knows no track, selects."""
    return f"{_escape(deployment)}({_escape(CANARY_SUFFIX)})?-{_HASH}-{_SUFFIX}"


def alert_variables(plan: RolloutPlan, window: str) -> dict[str, str]:
    """A plan's own alerts cover the whole Deployment, both tracks: no ``{{track}}``."""
    values = variables(plan, Scope(plan.target.namespaces.production, plan.target.deployment, STABLE), STABLE, window)
    values["pods"] = any_track_pods_regex(plan.target.deployment)
    values["selector"] = f'namespace="{templates.escape_label_value(values["namespace"])}",pod=~"{values["pods"]}"'
    del values["track"]
    return values


@dataclass(frozen=True)
class Scope:
    """Where a phase's gates look: namespace, deployment, which track is which, and each
    track's current pod-template-hash where it is known."""

    namespace: str
    deployment: str
    subject_track: str
    baseline_track: str = STABLE
    hashes: tuple[tuple[str, str], ...] = ()

    def pod_template_hash(self, track: str) -> str:
        return dict(self.hashes).get(track) or NO_HASH


def scope_for(plan: RolloutPlan, phase: Phase, hashes: Mapping[str, str] | None = None) -> Scope:
    return Scope(plan.namespace(phase), plan.target.deployment, phase.subject_track,
                 hashes=tuple(sorted((hashes or {}).items())))


def selector(plan: RolloutPlan | None, namespace: str, deployment: str, track: str) -> str:
    """``{{selector}}``: the plan's ``labels:`` matchers for ``track``, else the pod regex."""
    convention = plan.labels if plan is not None else None
    if convention is None:
        return f'namespace="{templates.escape_label_value(namespace)}",pod=~"{pods_regex(workload(deployment, track))}"'
    matchers = convention.stable if track == STABLE else convention.canary
    return ",".join(f'{name}="{templates.escape_label_value(value)}"' for name, value in matchers.items())


def variables(plan: RolloutPlan | None, scope: Scope, track: str, window: str) -> dict[str, str]:
    """Every template variable's value for ``track`` (``plan``: its label convention, if any)."""
    name = workload(scope.deployment, track)
    return {
        "namespace": scope.namespace,
        "deployment": scope.deployment,
        "track": track,
        "window": window,
        "pods": pods_regex(name),
        "workload": name,
        "pod_template_hash": scope.pod_template_hash(track),
        "selector": selector(plan, scope.namespace, scope.deployment, track),
    }


def query(plan: RolloutPlan, gate: Gate, scope: Scope, track: str, window: str) -> str:
    return render_metric(plan, plan.metrics[gate.metric].query, scope, track, window)


def render_metric(plan: RolloutPlan, template: str, scope: Scope, track: str, window: str) -> str:
    return templates.render(template, variables(plan, scope, track, window))


def uses_pod_template_hash(plan: RolloutPlan) -> bool:
    return any("pod_template_hash" in templates.placeholders(m.query) for m in plan.metrics.values())


def window_seconds(gate: Gate, phase: Phase | None, default: float | None = None) -> float:
    """A gate's range in plan seconds: its own window, else its phase's interval."""
    if gate.window is not None:
        return gate.window.total_seconds()
    if phase is not None:
        return phase.interval.total_seconds()
    return float(default or DEFAULT_WINDOW_SECONDS)


@dataclass(frozen=True)
class GateQuery:
    """One gate in one round: what to ask, and what to hold the answer against."""

    gate: Gate
    subject: str
    window: float
    baseline: str | None = None  # the stable track's query, same round
    recorded: Reading | None = None  # the pre-deploy value (Baseline.PRE_DEPLOY)

    @property
    def queries(self) -> tuple[str, ...]:
        return (self.subject,) if self.baseline is None else (self.subject, self.baseline)


ToPromQL = Callable[[float], str]


def plan_round(
    plan: RolloutPlan,
    gates: Iterable[Gate],
    scope: Scope,
    *,
    phase: Phase | None = None,
    to_promql: ToPromQL = promql_duration,
    pre_deploy: Mapping[str, float | str | None] | None = None,
    default_window: float | None = None,
) -> list[GateQuery]:
    """Every non-judge gate's queries for one round (judge gates: ``plan_judge``)."""
    out = []
    for gate in gates:
        if gate.kind is GateKind.JUDGE:
            continue
        seconds = window_seconds(gate, phase, default_window)
        window = to_promql(seconds)
        subject = query(plan, gate, scope, scope.subject_track, window)
        baseline: str | None = None
        recorded: Reading | None = None
        if gate.compares and gate.baseline is Baseline.STABLE:
            baseline = query(plan, gate, scope, scope.baseline_track, window)
        elif gate.compares:
            recorded = recorded_reading((pre_deploy or {}).get(gate.name))
        out.append(GateQuery(gate, subject, seconds, baseline, recorded))
    return out


def plan_pre_deploy(
    plan: RolloutPlan, phase: Phase, scope: Scope, *, to_promql: ToPromQL = promql_duration
) -> dict[str, str]:
    """Before the deploy: the stable track's query for every gate compared with ``pre_deploy``."""
    return {
        g.name: query(plan, g, scope, STABLE, to_promql(window_seconds(g, phase)))
        for g in phase.gates()
        if g.compares and g.baseline is Baseline.PRE_DEPLOY and g.kind is not GateKind.JUDGE
    }


def plan_judge(plan: RolloutPlan, gate: Gate, scope: Scope, window: str) -> tuple[str, str]:
    """A judge gate's (subject, baseline) series queries at resolution ``window``."""
    return query(plan, gate, scope, scope.subject_track, window), query(plan, gate, scope, scope.baseline_track, window)


# --- the reader ------------------------------------------------------------------------


def reading_of(exc: BaseException) -> Reading:
    """A provider's exception as data: the one place catch widths are decided."""
    if isinstance(exc, errors.NoData):
        return Reading()
    if isinstance(exc, errors.PhasegateError):
        return Reading(error=f"{type(exc).__name__}: {exc}")
    return Reading(error=f"unexpected {type(exc).__name__}: {exc}")


def reading(sample: Sample) -> Reading:
    """No data is not an error: it makes the gate Inconclusive, never Error."""
    if sample.no_data:
        return Reading()
    return Reading(sample.value, sample.error)


def recorded_reading(value: float | str | None) -> Reading:
    """A recorded pre-deploy baseline: a number, None (no data) or the error met reading it."""
    if isinstance(value, str):
        return Reading(error=f"pre-deploy baseline: {value}")
    return Reading(value)


def recorded_value(r: Reading) -> float | str | None:
    """What a pre-deploy reading is stored as in the release record (JSON)."""
    return r.error if r.error else r.value


def read_round(
    provider: MetricsProvider, queries: Mapping[K, str], *, pause: Callable[[], None] | None = None
) -> dict[K, Reading]:
    """Every query at once; those that came back empty are asked once more (after
    ``pause``) before they count as no data."""
    samples = collect(provider, queries)
    empty = {k: q for k, q in queries.items() if samples[k].no_data}
    if empty:
        if pause is not None:
            pause()
        samples.update(collect(provider, empty))
    return {k: reading(s) for k, s in samples.items()}


def read_point(provider: MetricsProvider, promql: str, at: float, step: float = 60.0) -> Reading:
    """The query's value at ``at`` (a one-point range query: ``query`` takes no time)."""
    try:
        points = provider.query_range(promql, at, at, step)
    except Exception as exc:  # every provider failure is data: reading_of
        return reading_of(exc)
    return Reading(value=points[-1][1]) if points else Reading()


def read_series(provider: MetricsProvider, promql: str, start: float, end: float, step: float) -> dict[int, Reading]:
    """Readings by rounded time from one range query; an error stands for every step."""
    try:
        points = provider.query_range(promql, start, end, step)
    except Exception as exc:  # every provider failure is data: reading_of
        r = reading_of(exc)
        if r.error is None:
            return {}
        count = int((end - start) // step) + 1
        return {round(start + i * step): r for i in range(count)}
    return {round(t): Reading(value=v) for t, v in points}


def read_values(
    provider: MetricsProvider, promql: str, start: float, end: float, step: float
) -> list[float] | Reading:
    """A range query's values in order, or the ``Reading`` that says why there are none."""
    try:
        return [v for _, v in provider.query_range(promql, start, end, step)]
    except Exception as exc:  # every provider failure is data: reading_of
        return reading_of(exc)


def measure(q: GateQuery, readings: Mapping[str, Reading], *, at: float) -> Measurement:
    """Hold one round's readings to the gate."""
    subject = readings.get(q.subject, Reading())
    base = readings.get(q.baseline, Reading()) if q.baseline is not None else q.recorded
    return evaluate(q.gate, subject, base, at=at, query=q.subject)


def queries_of(planned: Sequence[GateQuery]) -> dict[str, str]:
    """The distinct PromQL of a round, keyed by itself (one query per text)."""
    return {promql: promql for q in planned for promql in q.queries}


def run_round(
    provider: MetricsProvider,
    planned: Sequence[GateQuery],
    *,
    at: float,
    pause: Callable[[], None] | None = None,
) -> list[Measurement]:
    """Plan → readings → measurements, for every gate of one round."""
    readings = read_round(provider, queries_of(planned), pause=pause)
    return [measure(q, readings, at=at) for q in planned]
