"""scripts/container_engine.py: what it may stop, and what its images are keyed by."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "container_engine.py"


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("container_engine", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STARTED", tmp_path / "dockerd.pid")
    return module


def test_a_daemon_it_did_not_start_is_left_running(
    engine: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert engine.stop() == 0
    assert "not started by us" in capsys.readouterr().out


@pytest.mark.process
def test_a_recorded_pid_that_is_no_longer_dockerd_is_not_signalled(engine: ModuleType) -> None:
    # The daemon it started is gone and its pid reused by another process: that one lives.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        engine.STARTED.write_text(str(other.pid))
        assert engine.stop() == 0
        assert other.poll() is None
        assert not engine.STARTED.exists()
    finally:
        other.kill()
        other.wait()


def test_the_base_is_keyed_by_every_input(engine: ModuleType) -> None:
    packages = engine.BASE_PACKAGES
    key = engine._inputs_hash(packages)
    assert key == engine._inputs_hash(packages)
    assert key != engine._inputs_hash((*packages, "curl"))
    assert key != engine._inputs_hash(packages, b"ENV X=1")


def test_the_base_is_made_again_when_the_trusted_cas_change(
    engine: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    monkeypatch.setattr(engine, "HOST_CAS", cas)
    before = engine._inputs_hash(engine.BASE_PACKAGES)
    (cas / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert engine._inputs_hash(engine.BASE_PACKAGES) != before
