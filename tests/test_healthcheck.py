"""`bridge healthcheck` asks the bridge its settings describe: port, address and TLS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from bridge.commands.healthcheck import probe, url
from bridge.http.ports import free_port
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import Settings, load_settings
from tests.helpers import run_server


def serving(settings: Settings) -> object:
    servers = run_server(settings, MemoryPublisher())
    next(servers)
    return servers


def stop(servers: object) -> None:
    with pytest.raises(StopIteration):
        next(servers)  # type: ignore[call-overload]


def cli(settings: Settings, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {"BRIDGE_PORT": str(settings.port), "BRIDGE_HOST": settings.host}
    if settings.tls_certfile and settings.tls_keyfile:
        env |= {
            "BRIDGE_TLS_CERTFILE": str(settings.tls_certfile),
            "BRIDGE_TLS_KEYFILE": str(settings.tls_keyfile),
        }
    return subprocess.run(
        [sys.executable, "-m", *(command or ("bridge", "healthcheck"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.process
def test_a_bridge_on_another_port_is_healthy_and_one_gone_is_not(tmp_path: Path) -> None:
    settings = load_settings(spool_dir=tmp_path, port=free_port(), host="0.0.0.0")
    assert url(settings) == f"http://127.0.0.1:{settings.port}/healthz"
    servers = serving(settings)
    try:
        assert probe(settings) is None
        assert cli(settings).returncode == 0
        assert (
            cli(settings, "bridge.commands.healthcheck").returncode == 0
        )  # the image's HEALTHCHECK
    finally:
        stop(servers)
    assert probe(settings) is not None
    assert cli(settings, "bridge.commands.healthcheck").returncode == 1
    down = cli(settings)
    assert down.returncode == 1
    assert f"127.0.0.1:{settings.port}" in down.stderr


@pytest.mark.process
def test_a_bridge_serving_https_is_healthy(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("bridge.example.com")  # not 127.0.0.1: never verified
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    settings = load_settings(
        spool_dir=tmp_path,
        port=free_port(),
        tls_certfile=tmp_path / "cert.pem",
        tls_keyfile=tmp_path / "key.pem",
    )
    assert url(settings).startswith("https://127.0.0.1:")
    servers = serving(settings)
    try:
        assert probe(settings) is None
        assert cli(settings).returncode == 0
    finally:
        stop(servers)


def test_an_address_the_bridge_binds_is_the_one_asked() -> None:
    assert url(load_settings(host="::", port=81)) == "http://127.0.0.1:81/healthz"
    assert url(load_settings(host="::1", port=81)) == "http://[::1]:81/healthz"
    assert url(load_settings(host="10.1.2.3", port=81)) == "http://10.1.2.3:81/healthz"


def test_a_server_that_answers_but_not_200_is_unhealthy(tmp_path: Path) -> None:
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = load_settings(spool_dir=tmp_path, port=server.server_address[1])
        assert probe(settings) == f"{url(settings)}: HTTP 500"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.process
def test_bad_settings_are_named_not_reported_healthy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_PORT"] = "not-a-port"
    done = subprocess.run(
        [sys.executable, "-m", "bridge.commands.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "BRIDGE_PORT" in done.stderr
