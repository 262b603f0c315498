"""Clocks: real time in production, scaled time in rehearsal.

A plan says "soak 48h, gate every 5m". A rehearsal at ``speed=3600`` runs an hour of plan
time per wall second, so that soak takes 48 s. Everything that waits or timestamps in a
flow asks the clock, never ``time`` directly. Plan time is unix seconds, starting at the
wall time the clock was made.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    speed: float

    def now(self) -> float:
        """Plan time, unix seconds."""
        ...

    def sleep(self, plan_seconds: float) -> None: ...

    def to_wall(self, plan_seconds: float) -> float:
        """How many wall seconds ``plan_seconds`` of plan time take."""
        ...


class RealClock:
    speed = 1.0

    def now(self) -> float:
        return time.time()

    def sleep(self, plan_seconds: float) -> None:
        if plan_seconds > 0:
            time.sleep(plan_seconds)

    def to_wall(self, plan_seconds: float) -> float:
        return plan_seconds


class ScaledClock:
    """Plan time runs ``speed`` times faster than the wall clock, from ``epoch`` on.

    Plan time is a function of wall time and the epoch alone, so two processes given the
    same epoch agree on it: a rollout restarted after a crash resumes its soak where the
    cluster's record says it was.
    """

    def __init__(self, speed: float, *, epoch: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self.epoch = time.time() if epoch is None else epoch

    def now(self) -> float:
        return self.epoch + (time.time() - self.epoch) * self.speed

    def sleep(self, plan_seconds: float) -> None:
        if plan_seconds > 0:
            time.sleep(plan_seconds / self.speed)

    def to_wall(self, plan_seconds: float) -> float:
        return plan_seconds / self.speed
