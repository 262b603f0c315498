"""`phasegate validate` as a user runs it: the real console script, in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED_PLAN = ROOT / "deployments/plans/token-refresh-locking.yaml"
INVALID = sorted((ROOT / "tests/plans/invalid").glob("*.yaml"))
PHASEGATE = [sys.executable, "-m", "phasegate.entry.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PHASEGATE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def expectations(path: Path) -> list[tuple[int, str]]:
    found = []
    for line in path.read_text().splitlines():
        m = re.match(r"# expect: (\d+): (.*)$", line)
        if m:
            found.append((int(m.group(1)), m.group(2)))
    return found


def test_seed_plan_is_valid_and_summarised():
    result = run("validate", str(SEED_PLAN))
    assert result.returncode == 0, result.stderr
    assert "phase canary-10pct: production 10%" in result.stdout
    assert "sign-off after 4w, closes TOKEN-REFRESH-001" in result.stdout


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_plan_exits_2_naming_file_line_and_field(path: Path):
    result = run("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    for line_no, fragment in expectations(path):
        prefix = f"{path}:{line_no}: "
        assert any(e.startswith(prefix) and fragment in e for e in errors), (prefix, fragment, errors)


def test_every_invalid_fixture_states_what_it_expects():
    assert len(INVALID) >= 12
    assert all(expectations(p) for p in INVALID)


@pytest.mark.parametrize(
    ("arg", "message"),
    [("/no/such/plan.yaml", "no such file"), ("/tmp", "is a directory")],
)
def test_unreadable_plan_path_is_a_clean_error(arg: str, message: str):
    result = run("validate", arg)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_file_is_a_clean_error(tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run("validate", str(empty))
    assert result.returncode == 2
    assert f"{empty}:1: (plan): the file is empty" in result.stderr
