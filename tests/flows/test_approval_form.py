"""The approval, halted and checklist forms as Prefect sees them: the JSON schema the server
validates a resume against (with Prefect's own validator), the labels the UI derives from it,
and the approval artifact's text. No server: the browser tests (tests/e2e) click the forms."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.schema_tools.validation import ValidationError, validate

from flows.approval import ApprovalRecord, HaltedAnswer, approval_form, approval_markdown, evidence_table
from flows.checklist import checklist_form, field_name
from phasegate import approval_form as fields
from phasegate.analysis import Measurement, Outcome
from phasegate.decide import Decision
from phasegate.plan import load_plan_text, plan_warnings, warning_lines
from tests.core.builders import SEED_PLAN_PATH, phase, seed_plan

CRITERIA = ["Keycloak audit logs show a single refresh per expiration", "Support tickets unchanged"]


def schema_of(form: Any) -> dict[str, Any]:
    # What the server stores and validates against: the form as the pause sends it.
    return dict(form.with_initial_data(description="shown above the form").model_json_schema())


def refusal(data: dict[str, Any], schema: dict[str, Any]) -> str:
    try:
        validate(data, schema, raise_on_error=True)
    except ValidationError as exc:
        return str(exc)
    return ""


def test_the_server_accepts_exactly_one_decision_and_every_criterion():
    schema = schema_of(approval_form(phase(manual_criteria=CRITERIA)))
    assert refusal(fields.answer("approve", "alice", "", [True, True]), schema) == ""
    assert refusal(fields.answer("reject", "alice", "", [False, False]), schema) == ""
    neither = fields.answer("", "alice", "", [True, True])
    both = {**fields.answer("approve", "alice", "", [True, True]), "reject": True}
    no_criteria = {k: v for k, v in fields.answer("reject", "alice", "", [False, False]).items()
                   if not k.startswith("criterion_")}
    for bad in (neither, both, no_criteria):
        assert refusal(bad, schema), bad


def test_no_field_but_the_comment_is_labelled_optional_and_the_decision_is_no_select():
    schema = schema_of(approval_form(phase(manual_criteria=CRITERIA)))
    # The UI appends "(Optional)" to every property not in "required".
    assert set(schema["properties"]) - set(schema["required"]) == {"comment"}
    assert "enum" not in str(schema)  # an enum is the combobox a mouse cannot open in the dialog
    assert [schema["properties"][f]["type"] for f in ("approve", "reject")] == ["boolean", "boolean"]
    criterion = schema["properties"]["criterion_1"]
    assert criterion["title"] == CRITERIA[0] and "default" not in criterion
    assert criterion["description"].startswith("Required to approve")


def test_the_halted_form_has_the_same_shape():
    schema = schema_of(HaltedAnswer)
    assert refusal(fields.halted_answer("rollback", "bob"), schema) == ""
    assert refusal(fields.halted_answer("hand_over", "bob"), schema) == ""
    assert refusal({"rollback": False, "hand_over": False, "by": "bob"}, schema)
    assert refusal({"rollback": True, "hand_over": True, "by": "bob"}, schema)
    assert "enum" not in str(schema)


@pytest.mark.parametrize(("data", "expected"), [
    ({"approve": True, "reject": False}, "approve"),
    ({"approve": False, "reject": True}, "reject"),
    ({"approve": True, "reject": True}, ""),
    ({"approve": False, "reject": False}, ""),
    ({}, ""),
])
def test_the_decision_is_the_one_switch_on(data, expected):
    assert fields.chosen(data, fields.APPROVE, fields.REJECT) == expected


def test_the_dialog_evidence_has_three_short_columns():
    table = evidence_table([
        Measurement("lock-success", Outcome.SUCCESSFUL, 0, value=0.99995, bound="value > 0.9995"),
        Measurement("latency", Outcome.FAILED, 0, value=140, baseline=100, compared=40,
                    bound="value − stable < 20"),
        Measurement("token-not-active", Outcome.INCONCLUSIVE, 0, bound="value == 0"),
    ]).splitlines()
    assert table[0] == "| gate | outcome | value vs bound |"
    assert table[2:] == ["| lock-success | Successful | 0.99995 > 0.9995 |",
                         "| latency | Failed | 40 < 20 |",  # the delta, not the raw value, against the bound
                         "| token-not-active | Inconclusive | no data == 0 |"]


def test_the_approval_artifact_says_who_what_why_and_what_was_attested():
    record = ApprovalRecord("full", Decision.APPROVE, approver="Grace  Hopper", comment="all clean\nreally",
                            criteria={CRITERIA[0]: True, CRITERIA[1]: True}, waited_wall=125.0,
                            refused=[{"approver": "mallory", "decision": "approve", "why": "not on the list"}])
    md = approval_markdown(record)
    assert md.startswith("# full: approve\n")
    for line in ("- **Decided by:** Grace Hopper", "- **Comment:** all clean really",
                 "- **Prefect account that sent it:** none recorded", f"- ✅ {CRITERIA[0]}",
                 "- mallory (approve): not on the list"):
        assert line in md
    assert "sent it:** alice@example.com" in approval_markdown(
        ApprovalRecord("full", Decision.REJECT, approver="a", sender="alice@example.com"))


def test_checklist_items_keep_their_words_and_show_their_evidence():
    plan = seed_plan()
    assert plan.checklist is not None
    items = plan.checklist.items
    load = next(i for i, item in enumerate(items) if item.auto == "load_tested")
    name = field_name(items[load], load)
    schema = schema_of(checklist_form(plan, {name: (True, "phase canary-10pct: 1000 requests")}))
    assert [schema["properties"][field_name(item, i)]["title"] for i, item in enumerate(items)] == [
        item.item for item in items]
    assert schema["properties"][name]["description"] == "Automatic check passed: phase canary-10pct: 1000 requests"
    assert schema["properties"][name]["default"] is True
    assert set(schema["required"]) == set(schema["properties"])  # none labelled "(Optional)"


def test_validate_warns_about_criteria_no_pause_asks(tmp_path):
    text = SEED_PLAN_PATH.read_text()
    assert plan_warnings(load_plan_text(text)) == []  # full's criteria are asked before promotion
    unasked = text.replace("approval: {required: true, timeout: 24h, on_timeout: halt}", "approval: {required: false}",
                           1)
    (where, message), = plan_warnings(load_plan_text(unasked))
    assert where == ("phases", 0, "manual_criteria") and "can never be asked" in message
    path = tmp_path / "unasked.yaml"
    path.write_text(unasked)
    line = next(n for n, text in enumerate(unasked.splitlines(), 1) if text.strip() == "manual_criteria:")
    assert warning_lines(path) == [f"{path}:{line}: phases.0.manual_criteria: {message}"]
