"""After promotion: which reviews are due, what window each covers, and their verdicts.

Pure core: the metrics provider is the ``ports.MetricsProvider`` Protocol; no Prefect,
Kubernetes or HTTP library is imported here.

Design decisions:

* A cadence's review periods tile its span after promotion exactly: period k covers
  ``[promoted + start + (k-1)·every, promoted + start + k·every]``, the last one cut at
  ``end``. The seed's cadences become: 24 hourly periods on day 1, 7 daily periods in week 1,
  one weekly summary of week 1, and bi-weekly summaries of weeks 2-3 and week 4. Periods are
  anchored on the promotion, not on the scheduler's clock, so every hour of the release is
  reviewed exactly once however the cron schedule is aligned.
* A scheduled run at ``now`` reviews the latest period that ended within the last
  ``lookback`` (default: the cadence's ``every``, which is what the schedules in
  ``prefect.yaml`` run at). A run that finds nothing to review does nothing: the daily
  deployment keeps running after week 1 and simply finds no release in its span.
* A review gate is evaluated on the whole Deployment (track ``stable``: after promotion
  every pod runs the new version) with ``{{window}}`` set to the review's window and the
  query evaluated at the window's end, so ``increase(...[1d])`` counts the whole day.
  ``baseline: pre_deploy`` is the same query over an equal window ending at the promotion.
* Past windows are read with a one-point range query (start = end): ``query`` has no time
  parameter, and ``query_range`` is part of the provider Protocol already.
* Summaries and sign-off ask "did it hold *throughout*", which one number over four weeks
  cannot answer (a bad day disappears in a monthly average), so they are measured per day
  (``tile``) and assessed with Argo's limits: one failed day fails the gate, and a day
  without data is Inconclusive, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from phasegate import gates
from phasegate.analysis import Assessment, Measurement, Outcome, Reading, assess, evaluate, worst
from phasegate.durations import format_duration
from phasegate.plan import Baseline, Cadence, Gate, GateKind, Reviews, RolloutPlan, SignOff
from phasegate.ports import STABLE, MetricsProvider
from phasegate.record import ANN_IMAGE, ANN_PLAN, ANN_PROMOTED_AT, ANN_SIGNED_OFF

DAY = 86400.0
# Resolution asked of Prometheus for a one-point range query; any value works for one point.
_POINT_STEP = 60.0


@dataclass(frozen=True)
class Window:
    """A closed time range in unix seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def tiles(self, size: float) -> list[Window]:
        """Consecutive windows of ``size`` covering this one; the last may be shorter."""
        count = max(1, math.ceil(self.seconds / size - 1e-9))
        return [Window(self.start + i * size, min(self.end, self.start + (i + 1) * size)) for i in range(count)]

    def __str__(self) -> str:
        return f"{_iso(self.start)} → {_iso(self.end)}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def parse_time(text: str) -> float:
    """Unix seconds from an annotation: a number, or ISO 8601 (a trailing ``Z`` is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class Release:
    """A promoted release as its Deployment's annotations describe it."""

    namespace: str
    deployment: str
    image: str
    promoted_at: float
    plan: str = ""
    signed_off: bool = False

    @classmethod
    def from_annotations(cls, namespace: str, deployment: str, annotations: Mapping[str, str]) -> Release | None:
        """``None`` when the Deployment carries no usable promotion time."""
        raw = annotations.get(ANN_PROMOTED_AT)
        if not raw:
            return None
        try:
            promoted_at = parse_time(raw)
        except ValueError:
            return None
        return cls(
            namespace=namespace,
            deployment=deployment,
            image=annotations.get(ANN_IMAGE, ""),
            promoted_at=promoted_at,
            plan=annotations.get(ANN_PLAN, ""),
            signed_off=bool(annotations.get(ANN_SIGNED_OFF)),
        )

    def __str__(self) -> str:
        image = f" ({self.image})" if self.image else ""
        return f"{self.namespace}/{self.deployment}{image}"


def running_mismatch(release: Release, running_image: str) -> str | None:
    """Why a review or sign-off of ``release`` would judge the wrong thing, or None.

    The gates read the whole Deployment, so if something (a GitOps sync, a hotfix, a rollback
    by hand) has put another image there since the promotion, weeks of "healthy" reviews
    would describe an image that is not the release. Refused, never measured."""
    if not release.image:
        return f"{release.namespace}/{release.deployment} has no release image on record"
    if running_image != release.image:
        return (f"{release.namespace}/{release.deployment} runs {running_image}, not the promoted "
                f"{release.image}: the release record no longer describes what serves")
    return None


# --- cadence ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DueReview:
    """One period of one cadence, ready to be reviewed."""

    cadence: Cadence
    period: int  # 1-based
    periods: int
    window: Window

    @property
    def is_summary(self) -> bool:
        return self.cadence.report == "summary"

    @property
    def title(self) -> str:
        return f"{self.cadence.name} review {self.period}/{self.periods}"


def periods(cadence: Cadence, promoted_at: float) -> list[Window]:
    span = Window(promoted_at + cadence.start.total_seconds(), promoted_at + cadence.end.total_seconds())
    return span.tiles(cadence.every.total_seconds())


def due_reviews(
    reviews: Reviews,
    promoted_at: float,
    now: float,
    *,
    cadence: str | None = None,
    lookback: float | None = None,
) -> list[DueReview]:
    """The review each cadence (or only the one named) owes at ``now``: the latest period that
    ended within ``lookback`` seconds (default: the cadence's ``every``)."""
    due: list[DueReview] = []
    for c in reviews.cadence:
        if cadence is not None and c.name != cadence:
            continue
        windows = periods(c, promoted_at)
        since = now - (lookback if lookback is not None else c.every.total_seconds())
        ended = [(i, w) for i, w in enumerate(windows, 1) if since < w.end <= now]
        if ended:
            i, window = ended[-1]
            due.append(DueReview(c, i, len(windows), window))
    return due


def signoff_window(signoff: SignOff, promoted_at: float) -> Window:
    return Window(promoted_at, promoted_at + signoff.after.total_seconds())


def signoff_due(signoff: SignOff, release: Release, now: float) -> bool:
    return not release.signed_off and now >= signoff_window(signoff, release.promoted_at).end


# --- measuring -------------------------------------------------------------------------


def gate_query(plan: RolloutPlan, gate: Gate, release: Release, seconds: float) -> str:
    """After promotion every pod runs the new version on the stable Deployment; the range is
    the review's own window, whatever the gate's rollout window was."""
    scope = gates.Scope(release.namespace, release.deployment, STABLE)
    return gates.query(plan, gate, scope, STABLE, _window(seconds))


def _window(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


def read_at(provider: MetricsProvider, promql: str, at: float) -> Reading:
    """The query's value at ``at``."""
    return gates.read_point(provider, promql, at, _POINT_STEP)


def read_tiles(provider: MetricsProvider, promql: str, tiles: Sequence[Window]) -> list[Reading]:
    """One reading per tile from a single range query (step = tile size)."""
    by_time = gates.read_series(provider, promql, tiles[0].end, tiles[-1].end, tiles[0].seconds)
    # A shortened last tile falls between steps: read it on its own.
    return [by_time[round(t.end)] if round(t.end) in by_time else read_at(provider, promql, t.end) for t in tiles]


@dataclass(frozen=True)
class ReviewResult:
    """Every gate's measurements over one review window, and the verdict."""

    title: str
    release: Release
    window: Window
    gates: tuple[Gate, ...]
    measurements: Mapping[str, tuple[Measurement, ...]]
    assessments: Mapping[str, Assessment]
    tile: float | None = None

    @property
    def outcome(self) -> Outcome:
        return worst(a.outcome for a in self.assessments.values())

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.SUCCESSFUL

    def problems(self) -> list[str]:
        """One line per gate that did not pass: what a notification says."""
        return [
            f"{name}: {a.outcome.value}" + (f" — {a.reason}" if a.reason else "")
            for name, a in self.assessments.items()
            if a.outcome is not Outcome.SUCCESSFUL
        ]


def review(
    plan: RolloutPlan,
    gates: Sequence[Gate],
    release: Release,
    window: Window,
    provider: MetricsProvider,
    *,
    title: str,
    tile: float | None = None,
) -> ReviewResult:
    """Measure ``gates`` over ``window``: once over the whole window, or once per ``tile``."""
    tiles = window.tiles(tile) if tile is not None else [window]
    length = tiles[0].seconds
    measurements: dict[str, tuple[Measurement, ...]] = {}
    assessments: dict[str, Assessment] = {}
    for gate in gates:
        if gate.kind is GateKind.JUDGE:
            raise ValueError(f"review gate {gate.name!r}: judge gates compare two live tracks; reviews have one")
        promql = gate_query(plan, gate, release, length)
        baseline = None
        if gate.compares and gate.baseline is Baseline.PRE_DEPLOY:
            baseline = read_at(provider, promql, release.promoted_at)
        readings = read_tiles(provider, promql, tiles) if len(tiles) > 1 else [read_at(provider, promql, window.end)]
        found = tuple(
            evaluate(gate, reading, baseline, at=t.end, query=promql)
            for reading, t in zip(readings, tiles, strict=True)
        )
        measurements[gate.name] = found
        assessments[gate.name] = assess(gate, found)
    return ReviewResult(title, release, window, tuple(gates), measurements, assessments, tile)


def review_due(plan: RolloutPlan, due: DueReview, release: Release, provider: MetricsProvider) -> ReviewResult:
    """A scheduled review: summaries longer than a day are measured day by day."""
    assert plan.reviews is not None
    tile = DAY if due.is_summary and due.window.seconds > DAY else None
    return review(plan, plan.reviews.gates, release, due.window, provider, title=due.title, tile=tile)


def signoff_review(plan: RolloutPlan, release: Release, provider: MetricsProvider) -> ReviewResult:
    """Whether every sign-off criterion held on every day since promotion."""
    assert plan.signoff is not None
    window = signoff_window(plan.signoff, release.promoted_at)
    return review(plan, plan.signoff.criteria, release, window, provider, title="sign-off", tile=DAY)
