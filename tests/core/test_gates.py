"""The gate planner and reader: pod-name regexes, template variables, per-round plans, and
provider answers as data (tests run in milliseconds; no Prometheus)."""

from __future__ import annotations

import random
import re

import pytest

from phasegate import errors, gates
from phasegate.analysis import Outcome, Reading
from phasegate.errors import PlanError
from phasegate.plan import load_plan_text
from phasegate.rehearsal.app import TrackObservation
from tests.core.builders import seed_plan

ALPHABET = gates.K8S_ALPHABET


def real_pod(workload: str, rng: random.Random, hash_len: int = 10) -> str:
    return (f"{workload}-{''.join(rng.choice(ALPHABET) for _ in range(hash_len))}-"
            f"{''.join(rng.choice(ALPHABET) for _ in range(5))}")


def matches(regex: str, name: str) -> bool:
    # Prometheus anchors regex matchers; RE2 and Python agree on this syntax.
    return re.fullmatch(regex, name) is not None


@pytest.mark.parametrize("name", [
    "bodhi-server-7d9c5b8f4-x2kqz", "bodhi-server-5f6d8b9c7d-4xj2p", "bodhi-server-b-bbbbb",
])
def test_stable_regex_matches_hand_written_stable_pod_names(name: str) -> None:
    assert matches(gates.pods_regex("bodhi-server"), name)


@pytest.mark.parametrize("name", [
    "bodhi-server-canary-7d9c5b8f4-x2kqz",  # the canary
    "bodhi-server-7d9c5b8f4",  # a ReplicaSet, not a pod
    "bodhi-server-7d9c5b8f4-x2kq",  # a suffix of four
    "bodhi-server-7d9c5b8f4-x2kqz-extra",
    "bodhi-server-worker-7d9c5b8f4-x2kqz",  # another Deployment named bodhi-server-*
    "bodhi-server-abcde-x2kqz",  # vowels are never in a hash
    "other-bodhi-server-7d9c5b8f4-x2kqz",
])
def test_stable_regex_refuses_everything_else(name: str) -> None:
    assert not matches(gates.pods_regex("bodhi-server"), name)


def test_canary_and_stable_never_overlap_on_generated_names() -> None:
    rng = random.Random(13)
    stable, canary = gates.pods_regex("bodhi-server"), gates.pods_regex("bodhi-server-canary")
    for _ in range(2000):
        hash_len = rng.randint(1, 10)
        s, c = real_pod("bodhi-server", rng, hash_len), real_pod("bodhi-server-canary", rng, hash_len)
        assert matches(stable, s) and not matches(canary, s)
        assert matches(canary, c) and not matches(stable, c)


def test_the_rehearsal_worlds_pod_names_select_their_track() -> None:
    for track in ("stable", "canary"):
        for pod in TrackObservation("ns", "bodhi-server", track, "img:1", 10, True, None).pods():
            assert matches(gates.pods_regex(gates.workload("bodhi-server", track)), pod.name)


def test_deployments_a_and_a_canary_x_in_one_namespace_are_told_apart() -> None:
    rng = random.Random(5)
    a, a_canary = gates.pods_regex("a"), gates.pods_regex("a-canary")
    other = [real_pod("a-canary-x", rng) for _ in range(200)]
    assert not any(matches(a, p) or matches(a_canary, p) for p in other)
    assert all(matches(gates.pods_regex("a-canary-x"), p) for p in other)


def test_a_standing_alert_selects_both_tracks() -> None:
    both = gates.any_track_pods_regex("bodhi-server")
    assert matches(both, "bodhi-server-7d9c5b8f4-x2kqz") and matches(both, "bodhi-server-canary-7d9c5b8f4-x2kqz")
    assert not matches(both, "bodhi-server-worker-7d9c5b8f4-x2kqz")


def test_variables_name_each_tracks_workload_pods_and_hash() -> None:
    scope = gates.Scope("bodhi", "bodhi-server", "canary", hashes=(("canary", "5f6d8b9c7d"),))
    canary = gates.variables(None, scope, "canary", "5m")
    assert canary["workload"] == "bodhi-server-canary"
    assert canary["pod_template_hash"] == "5f6d8b9c7d"
    assert canary["selector"] == f'namespace="bodhi",pod=~"{gates.pods_regex("bodhi-server-canary")}"'
    # Unknown hash: a value no ReplicaSet can have, never "" (which matches series without the label).
    assert gates.variables(None, scope, "stable", "5m")["pod_template_hash"] == gates.NO_HASH


PLAN = """
apiVersion: phasegate/v1
name: t
target: {{deployment: {deployment}, container: app, namespaces: {{production: prod}}}}
{labels}
metrics:
  m: {{query: '{query}'}}
phases:
  - {{name: c, environment: production, canary_share: 10, soak: 1h, interval: 5m,
     triggers: [{{name: t, metric: m, kind: zero, rollback: canary_only}}],
     success: [{{name: d, metric: m, kind: delta, op: "<", threshold: 1}}]}}
"""


def plan_text(query: str = 'sum(rate(x{pod=~"{{pods}}"}[{{window}}]))', labels: str = "",
              deployment: str = "app") -> str:
    return PLAN.format(query=query, labels=labels, deployment=deployment)


def test_a_plans_labels_convention_renders_as_selector() -> None:
    plan = load_plan_text(plan_text('sum(rate(x{{{selector}}}[{{window}}]))',
                                    "labels: {stable: {track: stable}, canary: {track: canary, app: web}}"))
    planned = gates.plan_round(plan, plan.phases[0].gates(), gates.scope_for(plan, plan.phases[0]))
    assert planned[0].subject == 'sum(rate(x{track="canary",app="web"}[300s]))'
    assert planned[1].baseline == 'sum(rate(x{track="stable"}[300s]))'


@pytest.mark.parametrize(("labels", "line", "message"), [
    ("labels: {stable: {track: stable}, canary: {track: stable}}", 5, "do not disagree on any label"),
    ("labels: {stable: {}, canary: {track: canary}}", 5, "labels.stable: name at least one label"),
    ('labels: {stable: {"__name__": x}, canary: {track: canary}}', 5, "labels.stable.__name__: not a Prometheus"),
    ('labels: {stable: {track: ""}, canary: {track: canary}}', 5, "an empty value matches series without the label"),
    ("labels: {stable: {track: stable}}", 5, "labels.canary: required field is missing"),
])
def test_a_bad_labels_convention_is_refused_with_file_and_line(labels: str, line: int, message: str) -> None:
    with pytest.raises(PlanError) as err:
        load_plan_text(plan_text(labels=labels), "plan.yaml")
    assert any(p.startswith(f"plan.yaml:{line}: ") and message in p for p in err.value.problems), err.value.problems


def test_a_deployment_name_too_long_for_pods_is_refused_at_validate() -> None:
    with pytest.raises(PlanError, match=r"target.deployment: .* too long for \{\{pods\}\}"):
        load_plan_text(plan_text(deployment="a" * 45), "plan.yaml")
    load_plan_text(plan_text(deployment="a" * 39), "plan.yaml")


def test_a_round_plans_subject_baseline_and_recorded_pre_deploy_value() -> None:
    plan = seed_plan()
    phase = plan.phase("full")
    planned = {q.gate.name: q for q in gates.plan_round(plan, phase.gates(), gates.scope_for(plan, phase),
                                                         phase=phase, pre_deploy={"p99-latency-increase": 41.0})}
    p99 = planned["p99-latency-increase"]
    assert p99.baseline is None and p99.recorded == Reading(41.0)
    assert p99.window == 300.0 and "[300s]" in p99.subject
    assert gates.pods_regex("bodhi-server") in p99.subject


def test_a_pre_deploy_baseline_that_errored_reads_error_not_no_data() -> None:
    plan = seed_plan()
    phase = plan.phase("full")
    recorded = gates.recorded_value(gates.reading_of(errors.ProviderUnavailable("connection refused")))
    planned = gates.plan_round(plan, phase.gates(), gates.scope_for(plan, phase), phase=phase,
                               pre_deploy={"p99-latency-increase": recorded})
    q = next(q for q in planned if q.gate.name == "p99-latency-increase")
    m = gates.measure(q, {q.subject: Reading(120.0)}, at=0.0)
    assert m.outcome is Outcome.ERROR and "connection refused" in m.message


@pytest.mark.parametrize(("exc", "expected"), [
    (errors.NoData("empty"), Reading()),
    (errors.ProviderUnavailable("down"), Reading(error="ProviderUnavailable: down")),
    (errors.QueryRejected("parse error"), Reading(error="QueryRejected: parse error")),
    (KeyError("bug"), Reading(error="unexpected KeyError: 'bug'")),
])
def test_every_provider_failure_is_read_as_data_in_one_place(exc: BaseException, expected: Reading) -> None:
    assert gates.reading_of(exc) == expected


class Flaky:
    """Empty on the first ask of each query, a value on the second."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}

    def query(self, promql: str) -> float:
        self.asked[promql] = self.asked.get(promql, 0) + 1
        if self.asked[promql] == 1:
            raise errors.NoData("not scraped yet")
        return 1.0

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        raise NotImplementedError

    def is_online(self) -> bool:
        return True


def test_an_empty_answer_is_asked_once_more_before_it_counts() -> None:
    provider, paused = Flaky(), []
    readings = gates.read_round(provider, {"a": "a", "b": "b"}, pause=lambda: paused.append(1))
    assert readings == {"a": Reading(1.0), "b": Reading(1.0)}
    assert provider.asked == {"a": 2, "b": 2} and paused == [1]


def test_every_caller_plans_through_the_one_planner() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for module in ("tasks/metrics.py", "phasegate/backtest.py", "phasegate/review.py", "phasegate/render/alerts.py"):
        text = (root / module).read_text()
        assert "gates." in text and "templates.render(plan.metrics" not in text, module
