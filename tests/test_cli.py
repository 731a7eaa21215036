"""The `bridge` command as a user runs it: real processes, real broker."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest

from bridge import __version__
from bridge.http.ports import free_port
from bridge.settings import Settings
from tests.helpers import (
    Broker,
    DevBanner,
    RunningRegistry,
    process_env,
    sample,
    sample_bytes,
    wait_for,
    wait_for_port,
)
from tests.traffic import listening

BRIDGE = [sys.executable, "-m", "bridge"]
TOKEN = "cli-test-token-Zq8"


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_AUTH_TOKENS"] = TOKEN
    env.update(values)
    return env


def run(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRIDGE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def serving(kafka_settings: Settings) -> Iterator[tuple[Settings, dict[str, str]]]:
    env = process_env(kafka_settings, BRIDGE_AUTH_TOKENS=TOKEN)
    process = subprocess.Popen(
        [*BRIDGE, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_port(kafka_settings.port, process=process)
        yield kafka_settings, env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(15) == 0
        finally:
            process.kill()
            process.communicate()


@pytest.mark.process
def test_version_and_help() -> None:
    assert run("version", env=environment()).stdout.strip() == f"bridge {__version__}"
    for command in ("serve", "dev", "tail"):
        result = run(command, "--help", env=environment())
        assert result.returncode == 0
        assert "usage: bridge" in result.stdout


@pytest.mark.process
def test_a_bad_setting_stops_the_start_with_one_line() -> None:
    result = run("serve", env=environment(BRIDGE_PORT="eighty"))
    assert result.returncode == 2
    assert "BRIDGE_PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.process
def test_serve_refuses_to_start_without_a_token() -> None:
    result = run("serve", env=environment(BRIDGE_AUTH_TOKENS=""))
    assert result.returncode == 2
    assert "BRIDGE_AUTH_TOKENS" in result.stderr
    assert "BRIDGE_ALLOW_UNAUTHENTICATED" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.process
def test_an_unreachable_broker_is_reported_clearly() -> None:
    env = environment(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        BRIDGE_KAFKA_CONNECT_TIMEOUT="1",
        BRIDGE_PORT=str(free_port()),
    )
    result = run("serve", env=env)
    assert result.returncode == 1
    assert "cannot reach Kafka" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.kafka
def test_serve_then_tail_shows_the_case_rebuilt_exactly(
    serving: tuple[Settings, dict[str, str]], broker: Broker, request: pytest.FixtureRequest
) -> None:
    settings, env = serving
    url = f"http://127.0.0.1:{settings.port}/webhooks/airudder/{TOKEN}"
    for kind in ("call", "chatbot"):
        assert httpx2.post(url, content=sample_bytes(kind)).status_code == 200
    tailed = run("tail", "--case-id", "12345.0", "--from-beginning", "--until-idle", "2", env=env)
    assert tailed.returncode == 0, tailed.stderr
    docs = [orjson.loads(line) for line in tailed.stdout.splitlines()]
    by_topic = {doc["topic"]: doc for doc in docs}
    assert by_topic[f"{settings.topic_prefix}call"]["notification"] == sample("call")
    assert by_topic[f"{settings.topic_prefix}chatbot"]["notification"] == sample("chatbot")
    assert {doc["key"] for doc in docs} == {"12345.0"}

    other = run("tail", "--case-id", "nobody", "--from-beginning", "--until-idle", "1", env=env)
    assert other.stdout == ""

    pretty = run(
        "tail", "--type", "call", "--from-beginning", "--until-idle", "1", "--format", "pretty",
        env=env,
    )  # fmt: skip
    assert re.search(r"call\s+case=12345\.0\s+intention=E\s+hangup_type=ByCallee", pretty.stdout)


@pytest.mark.kafka
def test_tail_shows_dead_letters_with_their_reason(
    serving: tuple[Settings, dict[str, str]], broker: Broker, request: pytest.FixtureRequest
) -> None:
    settings, env = serving
    url = f"http://127.0.0.1:{settings.port}/webhooks/airudder/{TOKEN}"
    assert httpx2.post(url, content=b"\xff\xfe not json").status_code == 200
    tailed = run("tail", "--type", "dlq", "--from-beginning", "--until-idle", "1.5", env=env)
    [doc] = [orjson.loads(line) for line in tailed.stdout.splitlines()]
    assert doc["headers"]["dlq-reason"] == "not-json"
    assert doc["raw_encoding"] == "base64"
    assert doc["notification"] is None


@pytest.mark.kafka  # `bridge dev` starts its own broker (Tansu)
def test_dev_starts_a_broker_serves_and_stops_both_on_ctrl_c() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*BRIDGE, "dev"],
        env=environment(BRIDGE_PORT=str(port), BRIDGE_AUTH_TOKENS=""),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process=process)
        banner = DevBanner.read(process, timeout=20)
        assert banner.url.startswith(f"http://127.0.0.1:{port}/webhooks/airudder/")
        assert len(banner.url.rpartition("/")[2]) >= 32  # a generated token
        bare = httpx2.post(banner.url.rpartition("/")[0], content=b"{}")
        assert bare.status_code == 404
        assert banner.example.is_file()
        response = httpx2.post(banner.url, content=banner.example.read_bytes())
        assert response.status_code == 200
        env = environment(BRIDGE_KAFKA_BOOTSTRAP_SERVERS=banner.bootstrap_servers)
        tailed = run("tail", "--from-beginning", "--until-idle", "2", env=env)
        assert orjson.loads(tailed.stdout)["notification"] == sample("call")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(20)
        process.communicate()
    assert code == 0
    banner.assert_broker_gone()


@pytest.mark.kafka
@pytest.mark.one_broker  # the supervisor's tests: about processes, not the broker
def test_several_workers_share_the_socket_and_add_up_their_metrics(
    kafka_settings: Settings,
) -> None:
    env = process_env(kafka_settings, BRIDGE_AUTH_TOKENS=TOKEN, BRIDGE_WORKERS="2")
    log = kafka_settings.spool_dir.parent / "workers.log"  # type: ignore[union-attr]
    scratch = kafka_settings.spool_dir.parent / "tmp"  # type: ignore[union-attr]
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)  # where the workers' metrics directory is made
    with log.open("wb") as out:
        process = subprocess.Popen([*BRIDGE, "serve"], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{kafka_settings.port}"
    try:
        wait_for_port(kafka_settings.port, process=process)
        time.sleep(1.0)  # both workers up
        data = sample("call")
        for i in range(20):
            data["call"]["call_id"] = f"worker-test-{i}"
            # a new connection each time, so both workers get some
            response = httpx2.post(f"{base}/webhooks/airudder/{TOKEN}", content=orjson.dumps(data))
            assert response.status_code == 200
        for _ in range(5):  # whichever worker answers the scrape, the sum is whole
            text = httpx2.get(f"{base}/metrics").text
            assert 'bridge_notifications_total{outcome="stored",type="call"} 20.0' in text
        # Connections opened together, kept alive: each worker takes a share of them (uvloop
        # would otherwise let the first worker to wake accept them all).
        assert len(_workers_answering(kafka_settings.port, connections=16)) == 2
        assert kafka_settings.spool_dir is not None
        assert {p.name for p in kafka_settings.spool_dir.glob("spool-*.sqlite3")} == {
            "spool-0.sqlite3",
            "spool-1.sqlite3",
        }
        assert [p.name[:15] for p in scratch.iterdir()] == ["bridge-metrics-"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert list(scratch.iterdir()) == []  # the metrics directory went with the workers
    lines = [orjson.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    stored = [x for x in lines if x.get("logger") == "bridge.notification"]
    assert len(stored) == 20 + 16  # each worker logs its own notifications
    assert len({x.get("request_id") for x in stored}) == 20 + 16


@contextlib.contextmanager
def _two_workers(
    settings: Settings, **values: str
) -> Iterator[tuple[subprocess.Popen[bytes], list[int], Path]]:
    """`bridge serve` with two workers: the supervisor, the workers' pids, and its log."""
    env = process_env(settings, BRIDGE_AUTH_TOKENS=TOKEN, BRIDGE_WORKERS="2", **values)
    log = settings.spool_dir.parent / "workers.log"  # type: ignore[union-attr]
    with log.open("wb") as out:
        process = subprocess.Popen([*BRIDGE, "serve"], env=env, stdout=out, stderr=out)
    try:
        wait_for_port(settings.port, process=process)
        yield process, _children(process.pid, count=2), log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(40) == 0
        finally:
            process.kill()  # no-op once it exited; else the next test would inherit it
            process.wait()


def _replaced(process: subprocess.Popen[bytes], workers: list[int], gone: int, port: int) -> None:
    """Worker `gone` has a successor, the other is still there, and both answer."""
    assert workers[1 - gone] in _children(process.pid, count=2, without=workers[gone])
    wait_for(lambda: len(_workers_answering(port, connections=16)) == 2, 20, "both answer", 0.2)


@pytest.mark.kafka
@pytest.mark.one_broker
def test_a_worker_that_dies_is_replaced(kafka_settings: Settings) -> None:
    with _two_workers(kafka_settings) as (process, workers, log):
        os.kill(workers[0], signal.SIGKILL)
        _replaced(process, workers, 0, kafka_settings.port)
        # The gauges add up the live workers only: the dead one's values are gone.
        text = httpx2.get(f"http://127.0.0.1:{kafka_settings.port}/metrics").text
        found = re.search(r"^bridge_spool_max_bytes (\S+)$", text, re.MULTILINE)
        assert found is not None
        assert float(found.group(1)) == 2 * kafka_settings.spool_max_bytes
    assert re.search(r"worker 0 exited \(-9\) after \d+ s: replaced in 0.5 s", log.read_text())


@pytest.mark.kafka
@pytest.mark.one_broker
def test_a_hung_worker_is_killed_and_replaced(kafka_settings: Settings) -> None:
    with _two_workers(kafka_settings, BRIDGE_WORKER_TIMEOUT="2") as (process, workers, log):
        # Both serving: the supervisor watches a worker's heartbeat from then on.
        wait_for(
            lambda: len(_workers_answering(kafka_settings.port, connections=16)) == 2,
            30,
            "both serving",
            0.2,
        )
        os.kill(workers[1], signal.SIGSTOP)  # alive, but its event loop runs no more
        _replaced(process, workers, 1, kafka_settings.port)
    assert re.search(r"worker 1 hung \(\d+ s\): killed", log.read_text())


@pytest.mark.kafka
@pytest.mark.one_broker
def test_a_worker_that_does_not_stop_is_killed_when_the_service_stops(
    kafka_settings: Settings,
) -> None:
    values = {"BRIDGE_WORKER_TIMEOUT": "600", "BRIDGE_ACK_TIMEOUT": "1"}  # not seen as hung
    values["BRIDGE_SHUTDOWN_TIMEOUT"] = "1"
    with _two_workers(kafka_settings, **values) as (_, workers, log):
        os.kill(workers[0], signal.SIGSTOP)  # it cannot act on SIGTERM
        began = time.monotonic()
    assert time.monotonic() - began < 15  # 1 + 2 + 1 s of budgets, then SIGKILL
    assert "worker 0 did not stop in time: killed" in log.read_text()


@pytest.mark.kafka
@pytest.mark.one_broker
def test_workers_whose_supervisor_is_killed_stop_by_themselves(kafka_settings: Settings) -> None:
    env = process_env(kafka_settings, BRIDGE_AUTH_TOKENS=TOKEN, BRIDGE_WORKERS="2")
    log = kafka_settings.spool_dir.parent / "workers.log"  # type: ignore[union-attr]
    with log.open("wb") as out:
        process = subprocess.Popen([*BRIDGE, "serve"], env=env, stdout=out, stderr=out)
    try:
        wait_for_port(kafka_settings.port, process=process)
        workers = _children(process.pid, count=2)
    finally:
        process.kill()  # no SIGTERM to pass on: the workers must notice by themselves
        process.wait()
    wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 20, "workers gone")
    wait_for(lambda: listening(kafka_settings.port) == 0, 5, "the port free")
    assert log.read_text().count("the supervisor is gone, stopping") == 2


@pytest.mark.kafka
@pytest.mark.one_broker
def test_workers_that_cannot_listen_stop_the_service(kafka_settings: Settings) -> None:
    with socket.socket() as taken:  # a plain listener on the port: no sharing it
        taken.bind(("127.0.0.1", kafka_settings.port))
        taken.listen()
        env = process_env(kafka_settings, BRIDGE_AUTH_TOKENS=TOKEN, BRIDGE_WORKERS="2")
        result = subprocess.run(
            [*BRIDGE, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1
    assert f"cannot listen on port {kafka_settings.port}" in result.stderr


def _children(pid: int, count: int, without: int | None = None) -> list[int]:
    """The worker processes of `pid` (spawned ones, not multiprocessing's helper), once there
    are `count` of them and `without` is gone."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
        workers = [
            c for c in found
            if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
        ]  # fmt: skip
        if len(workers) == count and without not in workers:
            return workers
        time.sleep(0.1)
    pytest.fail(f"no {count} workers under {pid}")


def _workers_answering(port: int, connections: int) -> set[str]:
    """Open the connections at once, post one notification on each, and tell the workers
    apart by their answers' request ids (each process has its own prefix)."""
    sockets = [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)
    ]
    prefixes = set()
    try:
        for n, connection in enumerate(sockets):
            data = sample("call")
            data["call"]["call_id"] = f"balance-test-{n}"
            body = orjson.dumps(data)
            connection.sendall(
                f"POST /webhooks/airudder/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        for connection in sockets:
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            found = re.search(rb"x-request-id: ([0-9a-f]{12})", answer)
            assert found is not None
            prefixes.add(found.group(1).decode())
    finally:
        for connection in sockets:
            connection.close()
    return prefixes


@pytest.mark.kafka
def test_serve_refuses_to_start_when_its_schemas_are_not_registered(
    kafka_settings: Settings, schema_registry: RunningRegistry
) -> None:
    env = process_env(
        kafka_settings,
        BRIDGE_AUTH_TOKENS=TOKEN,
        BRIDGE_SCHEMA_REGISTRY_URL=schema_registry.url,
        BRIDGE_SCHEMA_REGISTRATION="lookup",
    )
    result = run("serve", env=env)
    assert result.returncode == 2
    assert f"not registered under subject {kafka_settings.topic_prefix}call-value" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
