"""Whatever a person (or a broken editor) feeds the loader, the answer is a PlanError with
FILE:LINE lines or a plan — never a traceback."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegate.errors import PlanError
from phasegate.plan import load_plan_text
from tests.core.builders import SEED_PLAN_PATH

SEED_TEXT = SEED_PLAN_PATH.read_text()
LINE = re.compile(r"^fuzz\.yaml:\d+: ")

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def check(text: str) -> None:
    try:
        load_plan_text(text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.problems and all(LINE.match(p) for p in exc.problems), exc.problems


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_a_clean_error(text):
    check(text)


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(min_value=0, max_value=len(SEED_TEXT) - 1), st.integers(min_value=1, max_value=40), st.text(max_size=12))
def test_the_seed_plan_with_a_span_replaced_is_a_clean_error_or_a_plan(start, length, replacement):
    check(SEED_TEXT[:start] + replacement + SEED_TEXT[start + length :])


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(yaml_values)
def test_any_yaml_shaped_data_is_a_clean_error(value):
    import json

    check(json.dumps(value, allow_nan=True))  # JSON is YAML
