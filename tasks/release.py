"""The release record kept on the stable Deployment's annotations.

Durable rollout state belongs on the cluster, not in memory: a killed flow process takes
its memory (and Prefect's transaction rollback hooks) with it, while the annotations stay.
A rerun for the same plan and image reads them and resumes where the last run stopped;
the scheduled reviews find promoted releases by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from phasegate import ports
from phasegate.plan import RolloutPlan
from tasks.common import dumps, loads

ANN_TOTAL_REPLICAS = ports.ANNOTATION_PREFIX + "total-replicas"
ANN_SOAK_STARTED = ports.ANNOTATION_PREFIX + "soak-started-at"
ANN_BASELINES = ports.ANNOTATION_PREFIX + "pre-deploy-baselines"
ANN_SLACK_THREAD = ports.ANNOTATION_PREFIX + "slack-thread"
ANN_FLOW_RUN = ports.ANNOTATION_PREFIX + "flow-run"  # the Prefect flow run driving the rollout now

# Phase states, in the order a phase goes through them.
DEPLOYING, SOAKING, PASSED, HELD, APPROVED = "deploying", "soaking", "passed", "held", "approved"
ROLLED_BACK, HALTED, PROMOTED = "rolled-back", "halted", "promoted"
TERMINAL = {ROLLED_BACK, HALTED, PROMOTED}


def rollout_id(plan: RolloutPlan, image: str) -> str:
    return f"{plan.name}:{image}"


@dataclass
class Release:
    """The annotations of one rollout, read once and written through as they change."""

    id: str
    image: str
    previous_image: str
    total_replicas: int
    phase: str | None = None
    state: str | None = None
    soak_started: float | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)
    notified: list[str] = field(default_factory=list)
    slack_thread: dict[str, str] = field(default_factory=dict)
    flow_run: str | None = None

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Release | None:
        rid = annotations.get(ports.ANN_ROLLOUT_ID)
        if not rid:
            return None
        soak = annotations.get(ANN_SOAK_STARTED)
        return cls(
            id=rid,
            image=annotations.get(ports.ANN_IMAGE, ""),
            previous_image=annotations.get(ports.ANN_PREVIOUS_IMAGE, ""),
            total_replicas=int(annotations.get(ANN_TOTAL_REPLICAS, "0") or 0),
            phase=annotations.get(ports.ANN_PHASE) or None,
            state=annotations.get(ports.ANN_PHASE_STATE) or None,
            soak_started=float(soak) if soak else None,
            baselines=loads(annotations.get(ANN_BASELINES), {}),
            notified=loads(annotations.get(ports.ANN_NOTIFIED), []),
            slack_thread=loads(annotations.get(ANN_SLACK_THREAD), {}),
            flow_run=annotations.get(ANN_FLOW_RUN) or None,
        )

    def annotations(self) -> dict[str, str | None]:
        return {
            ports.ANN_ROLLOUT_ID: self.id,
            ports.ANN_IMAGE: self.image,
            ports.ANN_PREVIOUS_IMAGE: self.previous_image,
            ANN_TOTAL_REPLICAS: str(self.total_replicas),
            ports.ANN_PHASE: self.phase,
            ports.ANN_PHASE_STATE: self.state,
            ANN_SOAK_STARTED: None if self.soak_started is None else f"{self.soak_started:.3f}",
            ANN_BASELINES: dumps(self.baselines) if self.baselines else None,
            ports.ANN_NOTIFIED: dumps(self.notified[-50:]) if self.notified else None,
            ANN_SLACK_THREAD: dumps(self.slack_thread) if self.slack_thread else None,
            ANN_FLOW_RUN: self.flow_run,
        }

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL
