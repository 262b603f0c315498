"""``phasegate render alerts|dashboard`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from phasegate.entry.render_cli import render_app

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "deployments/plans/token-refresh-locking.yaml"


def test_render_alerts_prints_the_checked_in_rules() -> None:
    result = CliRunner().invoke(render_app, ["alerts", str(SEED)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / "deployments/rules/token-refresh-locking.rules.yaml").read_text()


def test_render_dashboard_writes_the_file_named_by_o(tmp_path: Path) -> None:
    target = tmp_path / "out" / "dashboard.json"
    result = CliRunner().invoke(render_app, ["dashboard", str(SEED), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["title"] == "Token refresh concurrency control"


def test_render_of_an_invalid_plan_names_file_and_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED.read_text().replace("canary_share: 10\n", "canary_share: 0\n"))
    result = CliRunner().invoke(render_app, ["alerts", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:" in result.output and "canary_share" in result.output
