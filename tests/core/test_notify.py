"""The pure notification renderer: Slack's limits, escaping, mentions, reminders."""

from __future__ import annotations

import pytest

from phasegate import notify
from phasegate.notify import Kind, Notification, Severity
from phasegate.rehearsal.slack_server import blocks_problem


def note(
    kind: Kind = Kind.PHASE_PASSED,
    severity: Severity = Severity.INFO,
    text: str = "error rate 0.1% < 1%",
    **kw: object,
) -> Notification:
    return Notification(kind=kind, severity=severity, rollout="payments/token-api", text=text, **kw)  # type: ignore[arg-type]


def test_every_kind_has_a_title_and_every_severity_an_emoji() -> None:
    assert set(notify.TITLES) == set(Kind)
    assert set(notify.SEVERITY_EMOJI) == set(Severity)


def test_fallback_text_is_always_set_and_shows_severity_emoji() -> None:
    text, blocks = notify.to_blocks(note(severity=Severity.WARNING, phase="canary"))
    assert text.startswith(":warning: Phase passed: payments/token-api / canary:")
    assert blocks[0]["text"]["text"].startswith(":warning: Phase passed")


def test_huge_text_and_80_fields_still_fit_slack_limits() -> None:
    fields = {f"gate {i}": "v" * 5000 for i in range(80)}
    text, blocks = notify.to_blocks(note(text="x" * 10_000, fields=fields))
    assert blocks_problem(blocks) is None
    assert len(text) <= notify.MAX_FALLBACK_TEXT and text.endswith(notify.ELLIPSIS)
    assert len(blocks) <= notify.MAX_BLOCKS
    assert len(blocks[0]["text"]["text"]) == notify.MAX_SECTION_TEXT
    field_sections = [b for b in blocks if "fields" in b]
    assert sum(len(b["fields"]) for b in field_sections) == 80
    assert all(len(b["fields"]) <= notify.MAX_FIELDS_PER_SECTION for b in field_sections)
    assert all(len(f["text"]) <= notify.MAX_FIELD_TEXT for b in field_sections for f in b["fields"])


def test_too_many_fields_for_50_blocks_are_cut_with_a_note() -> None:
    _, blocks = notify.to_blocks(note(fields={f"k{i}": "v" for i in range(1000)}, links=[("Grafana", "https://g")]))
    assert len(blocks) == notify.MAX_BLOCKS
    assert blocks_problem(blocks) is None
    assert "more field sections not shown" in blocks[-2]["elements"][0]["text"]
    assert blocks[-1]["elements"][0]["text"] == "<https://g|Grafana>"


def test_header_longer_than_150_chars_is_clipped() -> None:
    text, blocks = notify.header_blocks("ns/" + "a" * 300, {"Phase": "canary"})
    assert len(blocks[0]["text"]["text"]) == notify.MAX_HEADER_TEXT
    assert blocks[0]["type"] == "header"
    assert blocks_problem(blocks) is None
    assert text


def test_user_text_is_escaped_so_angle_brackets_are_not_markup() -> None:
    _, blocks = notify.to_blocks(note(text="p99 <200ms & <!channel>"))
    assert "p99 &lt;200ms &amp; &lt;!channel&gt;" in blocks[0]["text"]["text"]


def test_clip_never_leaves_half_an_entity() -> None:
    clipped = notify.clip("ab&amp;cd", 5)
    assert clipped == "ab" + notify.ELLIPSIS


def test_links_are_mrkdwn_links_not_buttons() -> None:
    _, blocks = notify.to_blocks(note(links=[("Dashboard", "https://grafana/d/x?a=1"), ("Run", "https://prefect/r|1")]))
    assert all(b["type"] != "actions" for b in blocks)
    assert blocks[-1]["elements"][0]["text"] == "<https://grafana/d/x?a=1|Dashboard> · <https://prefect/r%7C1|Run>"


def test_a_link_too_long_to_show_is_left_out() -> None:
    _, blocks = notify.to_blocks(note(links=[("huge", "https://x/" + "a" * 4000)]))
    assert [b["type"] for b in blocks] == ["section"]


@pytest.mark.parametrize(
    ("handle", "markup"),
    [
        ("S0123ABCD", "<!subteam^S0123ABCD>"),
        ("@U0123ABCD", "<@U0123ABCD>"),
        ("here", "<!here>"),
        ("<!subteam^S1|oncall>", "<!subteam^S1|oncall>"),
        ("@payments-oncall", "@payments-oncall"),
    ],
)
def test_mention_markup_pings_ids_and_passes_markup_through(handle: str, markup: str) -> None:
    assert notify.mention_markup(handle) == markup


def test_mention_comes_first_in_text_and_blocks() -> None:
    text, blocks = notify.to_blocks(note(Kind.ROLLBACK_STARTED, Severity.CRITICAL), mention="S0123ABCD")
    assert text.startswith("<!subteam^S0123ABCD> :rotating_light:")
    assert blocks[0]["text"]["text"].startswith("<!subteam^S0123ABCD> ")


@pytest.mark.parametrize(
    ("kind", "severity", "critical"),
    [
        (Kind.ROLLBACK_STARTED, Severity.WARNING, True),
        (Kind.ROLLBACK_FAILED, Severity.INFO, True),
        (Kind.PHASE_FAILED, Severity.CRITICAL, True),
        (Kind.PHASE_FAILED, Severity.WARNING, False),
        (Kind.ROLLBACK_VERIFIED, Severity.INFO, False),
    ],
)
def test_rollbacks_and_critical_severity_are_critical(kind: Kind, severity: Severity, critical: bool) -> None:
    assert notify.is_critical(note(kind, severity)) is critical


def test_thread_status_keeps_the_phase_across_phase_less_events() -> None:
    first = notify.thread_status({}, note(Kind.PHASE_STARTED, phase="canary"))
    second = notify.thread_status(first, note(Kind.ROLLBACK_STARTED, Severity.CRITICAL, text="token_not_active"))
    assert list(second) == ["Phase", "Status", "Last event"]
    assert second["Phase"] == "canary"
    assert second["Status"] == ":rotating_light: Rollback started"


def test_reminders_once_at_half_timeout_and_once_at_expiry() -> None:
    assert notify.reminder_times(1000.0, 3600.0) == [2800.0, 4600.0]


@pytest.mark.parametrize("timeout", [0.0, -5.0])
def test_no_reminders_without_a_timeout(timeout: float) -> None:
    assert notify.reminder_times(1000.0, timeout) == []


def test_approval_buttons_render_as_one_actions_block_within_slacks_block_limit():
    many = {f"field {i}": "x" for i in range(notify.MAX_BLOCKS * notify.MAX_FIELDS_PER_SECTION)}
    n = Notification(kind=Kind.APPROVAL_NEEDED, severity=Severity.INFO, rollout="r", text="waiting", fields=many,
                     actions=[("phasegate-approve", "Approve", "{}"), ("phasegate-reject", "Reject", "{}")])
    _, blocks = notify.to_blocks(n)
    assert len(blocks) <= notify.MAX_BLOCKS
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == ["phasegate-approve", "phasegate-reject"]
    assert actions["elements"][0]["style"] == "primary"
