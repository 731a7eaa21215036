from __future__ import annotations

import os
import socket
import time

import pytest
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from bridge.http.protocol import BridgeProtocol
from bridge.http.supervisor import APP, Worker, restart_delay, server_config
from bridge.settings import load_settings


@pytest.mark.parametrize(
    ("previous", "lived", "delay"),
    [
        (0.0, 0.3, 0.5),  # dies at start: wait a little
        (0.5, 0.3, 1.0),  # again: twice as long
        (16.0, 2.0, 30.0),  # never longer than 30 s
        (30.0, 5.0, 30.0),
        (30.0, 61.0, 0.0),  # ran for a while before it died: replaced at once
        (0.0, 3600.0, 0.0),
    ],
)
def test_a_worker_that_keeps_dying_is_replaced_ever_more_slowly(
    previous: float, lived: float, delay: float
) -> None:
    assert restart_delay(previous, lived) == delay


def test_the_server_runs_an_app_or_its_factory_with_bridges_limits() -> None:
    settings = load_settings(port=9999, ack_timeout=2.5, max_connections=7)
    app = Starlette()
    config = server_config(settings, app)  # type: ignore[arg-type]
    assert (config.app, config.factory, config.port) == (app, False, 9999)
    assert config.timeout_graceful_shutdown == 5  # the ack budget, rounded up, and 2 s
    # Each connection a BridgeProtocol, all of the server's sharing one Doors with its limits.
    assert config.http.func is BridgeProtocol  # type: ignore[union-attr]
    doors = config.http.keywords["doors"]  # type: ignore[union-attr]
    assert doors.limits.max_connections == 7
    assert doors.limits.body_timeout == settings.body_timeout + 1.0
    assert config.limit_concurrency is None
    assert not config.access_log
    assert config.log_config is None  # one process: `bridge serve` configured logging
    factory = server_config(settings.model_copy(update={"workers": 2}))
    assert (factory.app, factory.factory) == (APP, True)
    assert isinstance(factory.log_config, dict)  # each worker configures its own


@pytest.mark.process
def test_a_worker_gets_its_settings_as_an_object_not_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:  # a plain listener on the port: no sharing it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(port=port, workers=2, spool_dir="")
        with socket.socket() as elsewhere:
            elsewhere.bind(("127.0.0.1", 0))
            monkeypatch.setenv("BRIDGE_PORT", str(elsewhere.getsockname()[1]))
        # A worker that read the environment would stop at this (exit 1: a bad setting)
        # before it tried the port.
        monkeypatch.setenv("BRIDGE_WORKERS", "many")
        slot = Worker(0, settings)  # spawned: a fresh interpreter with this environment
        deadline = time.monotonic() + 60
        while slot.process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot.process.exitcode == STARTUP_FAILURE
        assert not slot.tend(time.monotonic(), 30.0)  # could not start: not replaced
    assert f"cannot listen on port {port}" in "".join(capfd.readouterr())
    assert os.environ["BRIDGE_PORT"] != str(port)
