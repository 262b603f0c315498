"""The release record on the stable Deployment, and every annotation key phasegate writes.

Design decisions:

* Durable rollout state belongs on the cluster, not in memory: a killed flow process takes
  its memory (and Prefect's transaction rollback hooks) with it, while the annotations stay.
  A rerun for the same plan and image reads them and resumes where the last run stopped;
  the scheduled reviews find promoted releases by them.
* One module owns every key and one type (``Release``) reads and writes them, so a key
  cannot be spelt two ways or parsed two ways.
* ``PhaseState`` values are the strings already on clusters (``rolled-back``...), so a
  record written by an earlier version still reads.
* Values are JSON where they are structured; a value that does not parse reads as its
  default rather than stopping a rollback that needs the rest of the record.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "phasegate.dev/"
ANN_ROLLOUT_ID = PREFIX + "rollout-id"
ANN_PLAN = PREFIX + "plan"
ANN_IMAGE = PREFIX + "image"
ANN_PREVIOUS_IMAGE = PREFIX + "previous-image"
ANN_PHASE = PREFIX + "phase"
ANN_PHASE_STATE = PREFIX + "phase-state"
ANN_TOTAL_REPLICAS = PREFIX + "total-replicas"
ANN_SOAK_STARTED = PREFIX + "soak-started-at"
ANN_BASELINES = PREFIX + "pre-deploy-baselines"
ANN_NOTIFIED = PREFIX + "notified"
ANN_SLACK_THREAD = PREFIX + "slack-thread"
ANN_FLOW_RUN = PREFIX + "flow-run"  # the Prefect flow run driving the rollout now
ANN_ROLLBACK = PREFIX + "rollback"  # the rollback under way or done: strategy, phase, reason, gates
ANN_PROMOTED_AT = PREFIX + "promoted-at"
# The promotion's wall-clock instant: what an alert's startsAt is compared with (see after_alert).
ANN_PROMOTED_WALL = PREFIX + "promoted-wall"
ANN_ROLLED_BACK = PREFIX + "rolled-back"
ANN_SIGNED_OFF = PREFIX + "signed-off"
ANN_CHECKLIST = PREFIX + "checklist-confirmed"
ANN_ALERTS_HANDLED = PREFIX + "alerts-handled"  # fingerprint@startsAt of alerts a rollback-candidate acted on

# Kept no longer than this many notification keys: the annotation must stay small, and
# only the latest phase's keys can still be sent again.
NOTIFIED_KEPT = 50


class PhaseState(enum.Enum):
    """Where the current phase is, in the order a phase goes through them."""

    DEPLOYING = "deploying"
    SOAKING = "soaking"
    PASSED = "passed"
    HELD = "held"
    APPROVED = "approved"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    HALTED = "halted"
    PROMOTED = "promoted"

    @property
    def finished(self) -> bool:
        return self in (PhaseState.ROLLED_BACK, PhaseState.HALTED, PhaseState.PROMOTED)


def rollout_id(plan_name: str, image: str) -> str:
    return f"{plan_name}:{image}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


@dataclass(frozen=True)
class RollbackRecord:
    """A rollback that has started: a rerun finishes it instead of soaking again."""

    phase: str
    strategy: str
    reason: str
    gates: tuple[str, ...] = ()
    started_at: float = 0.0

    def to_json(self) -> str:
        return dumps({"phase": self.phase, "strategy": self.strategy, "reason": self.reason,
                      "gates": list(self.gates), "started_at": self.started_at})

    @classmethod
    def from_json(cls, text: str | None) -> RollbackRecord | None:
        data = loads(text, None)
        if not isinstance(data, dict) or not data.get("phase") or not data.get("strategy"):
            return None
        return cls(str(data["phase"]), str(data["strategy"]), str(data.get("reason", "")),
                   tuple(str(g) for g in data.get("gates", ())), float(data.get("started_at", 0.0)))


@dataclass
class Release:
    """The annotations of one rollout, read once and written through as they change."""

    id: str
    image: str
    previous_image: str
    total_replicas: int
    phase: str | None = None
    state: PhaseState | None = None
    soak_started: float | None = None
    # A pre-deploy value per gate; a string is the provider error met reading it (gates.recorded_value).
    baselines: dict[str, float | str | None] = field(default_factory=dict)
    notified: list[str] = field(default_factory=list)
    slack_thread: dict[str, str] = field(default_factory=dict)
    flow_run: str | None = None
    rollback: RollbackRecord | None = None
    plan: str = ""
    # Plan time (the rollout's clock: reviews are scheduled on it); equal to wall time in
    # production, compressed in a rehearsal, so only ``promoted_wall`` means the same to
    # every process that reads the record.
    promoted_at: float | None = None
    signed_off: str | None = None
    promoted_wall: float | None = None

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Release | None:
        rid = annotations.get(ANN_ROLLOUT_ID)
        if not rid:
            return None
        soak = annotations.get(ANN_SOAK_STARTED)
        state = annotations.get(ANN_PHASE_STATE)
        promoted = annotations.get(ANN_PROMOTED_AT)
        return cls(
            id=rid,
            image=annotations.get(ANN_IMAGE, ""),
            previous_image=annotations.get(ANN_PREVIOUS_IMAGE, ""),
            total_replicas=_int(annotations.get(ANN_TOTAL_REPLICAS)),
            phase=annotations.get(ANN_PHASE) or None,
            state=_state(state),
            soak_started=_float(soak),
            baselines=loads(annotations.get(ANN_BASELINES), {}),
            notified=loads(annotations.get(ANN_NOTIFIED), []),
            slack_thread=loads(annotations.get(ANN_SLACK_THREAD), {}),
            flow_run=annotations.get(ANN_FLOW_RUN) or None,
            rollback=RollbackRecord.from_json(annotations.get(ANN_ROLLBACK)),
            plan=annotations.get(ANN_PLAN, ""),
            promoted_at=_float(promoted),
            signed_off=annotations.get(ANN_SIGNED_OFF) or None,
            promoted_wall=_float(annotations.get(ANN_PROMOTED_WALL)),
        )

    def annotations(self) -> dict[str, str | None]:
        """What to merge onto the Deployment (``None`` removes a key)."""
        return {
            ANN_ROLLOUT_ID: self.id,
            ANN_IMAGE: self.image,
            ANN_PREVIOUS_IMAGE: self.previous_image,
            ANN_PLAN: self.plan or None,
            ANN_TOTAL_REPLICAS: str(self.total_replicas),
            ANN_PHASE: self.phase,
            ANN_PHASE_STATE: self.state.value if self.state else None,
            ANN_SOAK_STARTED: None if self.soak_started is None else f"{self.soak_started:.3f}",
            ANN_BASELINES: dumps(self.baselines) if self.baselines else None,
            ANN_NOTIFIED: dumps(self.notified[-NOTIFIED_KEPT:]) if self.notified else None,
            ANN_SLACK_THREAD: dumps(self.slack_thread) if self.slack_thread else None,
            ANN_FLOW_RUN: self.flow_run,
            ANN_ROLLBACK: self.rollback.to_json() if self.rollback else None,
            ANN_PROMOTED_AT: None if self.promoted_at is None else f"{self.promoted_at:.3f}",
            ANN_PROMOTED_WALL: None if self.promoted_wall is None else f"{self.promoted_wall:.3f}",
        }

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished


def _state(text: str | None) -> PhaseState | None:
    try:
        return PhaseState(text) if text else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
