"""The real control plane launcher: what a user sees when it cannot start, and what it runs."""

from __future__ import annotations

import os
import shutil

import pytest

from phasegate.rehearsal.controlplane import ControlPlane, ControlPlaneError
from tests.fixtures.backends import RealControlPlane


def test_a_control_plane_that_does_not_come_up_stops_its_processes_and_keeps_its_logs(
        capsys: pytest.CaptureFixture[str]) -> None:
    plane = ControlPlane(ready_timeout=0.0)
    with pytest.raises(ControlPlaneError, match=r"etcd: no health after 0s; see .*/logs/etcd\.log"):
        plane.start()
    assert plane.workdir is not None
    try:
        assert (plane.workdir / "logs" / "etcd.log").exists()
        assert plane.processes == {}
        assert f"control plane logs kept in {plane.workdir / 'logs'}" in capsys.readouterr().out
    finally:
        shutil.rmtree(plane.workdir)


def test_the_session_control_plane_runs_v1_20_2_with_rbac_on_loopback(real_control_plane: RealControlPlane) -> None:
    plane = real_control_plane.plane
    assert plane.server.startswith("https://127.0.0.1:")
    assert real_control_plane.observer is not None
    assert real_control_plane.observer.get("/version")["gitVersion"] == "v1.20.2"
    assert all(os.path.exists(f"/proc/{p.pid}") for p in plane.processes.values())
    assert set(plane.rss_kib()) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    node = real_control_plane.observer.get("/api/v1/nodes/phasegate-node-0")
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["True"]
