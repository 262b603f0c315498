"""``serve_emulator``: the foreground command serves a seeded cluster and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phasegate.adapters.kubernetes import KubernetesCluster
from phasegate.ports import TargetRef
from tests.fixtures.common import free_port


def test_serve_emulator_writes_a_kubeconfig_the_python_client_loads_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    code = ("from phasegate.rehearsal.cluster import serve_emulator; "
            f"serve_emulator(None, {free_port()}, {str(kubeconfig)!r}, ready_delay=0.01)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not kubeconfig.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "kubeconfig never written"
            time.sleep(0.05)
        adapter = KubernetesCluster.from_kubeconfig(str(kubeconfig))
        assert adapter.read_target(TargetRef("bodhi", "bodhi-server", "bodhi-server")).stable.replicas == 10
        adapter.close()
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    assert "Kubernetes API emulator at http://127.0.0.1:" in out


@contextmanager
def emulator_command(cwd: Path, *extra: str) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """``phasegate emulator`` as a user runs it: the kubeconfig path it prints, and the process
    (stopped with SIGTERM on the way out)."""
    phasegate = Path(sys.executable).with_name("phasegate")
    process = subprocess.Popen([str(phasegate), "emulator", "--port", str(free_port()), *extra], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = ""
        while "kubeconfig:" not in banner:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "emulator exited"
            banner += line
        yield Path(banner.split("kubeconfig:", 1)[1].split()[0]), process
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)


def seeded_replicas(kubeconfig: Path) -> int:
    adapter = KubernetesCluster.from_kubeconfig(str(kubeconfig))
    try:
        return adapter.read_target(TargetRef("bodhi", "bodhi-server", "bodhi-server")).stable.replicas
    finally:
        adapter.close()


def test_phasegate_emulator_without_kubeconfig_writes_it_to_a_temp_dir_not_the_current_one(tmp_path: Path) -> None:
    with emulator_command(tmp_path) as (path, process):
        assert path.parent != tmp_path and path.is_file()
        assert seeded_replicas(path) == 10
    assert process.returncode == 0
    assert list(tmp_path.iterdir()) == []
    assert not path.exists()


def test_phasegate_emulator_writes_the_kubeconfig_where_kubeconfig_says_and_prints_that_path(tmp_path: Path) -> None:
    cwd, target = tmp_path / "repo", tmp_path / "configs" / "emulator.yaml"
    cwd.mkdir()
    with emulator_command(cwd, "--kubeconfig", str(target)) as (path, process):
        assert path == target
        assert seeded_replicas(target) == 10
    assert process.returncode == 0
    assert list(cwd.iterdir()) == []
    assert target.is_file()  # the user's file stays: only a temporary one is removed
