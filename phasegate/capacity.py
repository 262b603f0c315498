"""How many pods each track gets, and what share of production that really is.

Design decisions:

* A canary share is a replica ratio behind one Service (no traffic router), so the share a
  phase gets is whole pods: ``ceil(share × total)`` canary pods, at least one. With 3
  replicas a 10 % phase is one pod, which is 33 % of production; ``phase_shares`` states the
  real figure and ``share_problems`` refuses a phase further off its plan than
  ``target.share_tolerance`` percentage points (default 10: a 10 % phase needs at least 5
  replicas, a 50 % phase on an odd count is 1/(2n) off).
* A canary phase never leaves stable at 0: the point of a canary is that the old version
  still serves beside it. With one replica a second pod is surged (1 canary + 1 stable,
  50 %), which the tolerance then refuses unless the plan allows it; with more the canary
  gives one pod back.
* Surge, not swap: stable gives up a pod only for a canary pod that is Ready
  (``stable_while_surging``), so a canary that never starts costs capacity nothing — the
  Deployment's own ``maxUnavailable: 0`` rule, applied across the two Deployments.
* With a HorizontalPodAutoscaler the total is the autoscaler's, not the count at start:
  ``canary_beside`` sizes the canary beside the stable replicas it keeps, and
  ``scaled_bounds`` narrows its min/max to stable's share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


def canary_split(share_percent: float, total_replicas: int) -> tuple[int, int]:
    """(canary, stable) replicas for a share of ``total_replicas``.

    0 % is no canary; 100 % is all canary; anything between keeps both tracks at one pod or
    more (one replica: a pod is surged, so the two add up to 2)."""
    if total_replicas < 1:
        raise ValueError("total_replicas must be at least 1")
    if not 0 <= share_percent <= 100:
        raise ValueError("share_percent must be within 0..100")
    if share_percent == 0:
        return 0, total_replicas
    if share_percent == 100:
        return total_replicas, 0
    if total_replicas == 1:
        return 1, 1
    # Rounded first so that 30% of 10 is 3, not ceil(3.0000000000000004) = 4.
    canary = min(max(math.ceil(round(share_percent * total_replicas / 100, 9)), 1), total_replicas - 1)
    return canary, total_replicas - canary


def actual_share(canary: int, stable: int) -> float:
    """Percent of serving pods on the canary."""
    return 100.0 * canary / (canary + stable) if canary + stable else 0.0


@dataclass(frozen=True)
class PhaseShare:
    """What one phase's share comes to at a given replica count."""

    phase: str
    index: int
    planned: float
    canary: int
    stable: int

    @property
    def actual(self) -> float:
        return actual_share(self.canary, self.stable)

    @property
    def off_by(self) -> float:
        return abs(self.actual - self.planned)

    def describe(self) -> str:
        return (f"{self.phase}: {self.planned:g}% planned → {self.canary} canary + {self.stable} stable "
                f"= {self.actual:.1f}%")


def phase_shares(phases: Iterable[tuple[int, str, float]], total_replicas: int) -> list[PhaseShare]:
    """Each canary phase ``(index, name, canary_share)`` split at ``total_replicas``."""
    return [PhaseShare(name, i, share, *canary_split(share, total_replicas)) for i, name, share in phases]


def share_problems(shares: Iterable[PhaseShare], tolerance: float) -> list[tuple[int, str]]:
    """(phase index, message) for each phase whose real share is off by more than ``tolerance`` points."""
    return [
        (s.index, f"{s.describe()}, {s.off_by:.1f} points from the plan (share_tolerance {tolerance:g}); "
                  "use more replicas or a share they divide into")
        for s in shares if s.off_by > tolerance + 1e-9
    ]


def stable_while_surging(total_replicas: int, stable_target: int, canary_ready: int) -> int:
    """Stable's replicas while the canary comes up: one fewer per Ready canary pod, never
    below its target for the phase and never above the total it had."""
    return min(total_replicas, max(stable_target, total_replicas - max(canary_ready, 0)))


def canary_beside(share_percent: float, stable_replicas: int) -> int:
    """The canary's replicas that come closest to ``share_percent`` of the whole beside the
    ``stable_replicas`` an autoscaler keeps: whole pods, at least one while the share is
    above 0 (10 % beside 9 is 1, beside 22 is 2; 50 % beside 7 is 7)."""
    if not 0 <= share_percent < 100:
        raise ValueError("share_percent must be within 0..100 (exclusive): a canary beside stable")
    if share_percent == 0:
        return 0
    stable = max(stable_replicas, 1)
    exact = round(share_percent * stable / (100 - share_percent), 9)
    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    return min(sorted(candidates), key=lambda c: abs(actual_share(c, stable) - share_percent))


def scaled_bounds(share_percent: float, min_replicas: int, max_replicas: int) -> tuple[int, int]:
    """(min, max) of a canary autoscaler at ``share_percent`` of the stable one's bounds, as
    Flagger sizes its generated primary autoscaler: whole pods, at least one, min <= max."""
    low = max(1, math.ceil(round(share_percent * min_replicas / 100, 9)))
    high = max(low, math.ceil(round(share_percent * max_replicas / 100, 9)))
    return low, high
