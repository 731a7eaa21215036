"""Who gets in, and what a refused client learns (nothing)."""

from __future__ import annotations

import logging
import socket
import ssl
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import trustme
from starlette.testclient import TestClient

from bridge.errors import ConfigError
from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.http.ports import free_port
from bridge.kafka.client import kafka_options
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
from tests.helpers import run_server, sample_bytes

TOKEN = "s3cret-token-AbCdEf0123456789"


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def client(publisher: MemoryPublisher, tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        auth_tokens=f"{TOKEN},second-token", allow_unauthenticated=False, spool_dir=tmp_path
    )
    with TestClient(create_app(settings, publisher)) as test_client:
        yield test_client


def test_the_token_is_accepted_in_the_path_or_as_bearer(
    client: TestClient, publisher: MemoryPublisher
) -> None:
    assert client.post(f"{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes()).status_code == 200
    response = client.post(
        WEBHOOK_PATH,
        content=sample_bytes("chatbot"),
        headers={"Authorization": "Bearer second-token"},
    )
    assert response.status_code == 200
    assert len(publisher.topics["airudder.call"]) == len(publisher.topics["airudder.chatbot"]) == 1


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (WEBHOOK_PATH, {}),
        (f"{WEBHOOK_PATH}/wrong", {}),
        (f"{WEBHOOK_PATH}/{TOKEN[:-1]}", {}),
        (WEBHOOK_PATH, {"Authorization": "Bearer wrong"}),
        (WEBHOOK_PATH, {"Authorization": f"Basic {TOKEN}"}),
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
def test_a_wrong_or_missing_token_is_answered_like_an_unknown_path(
    client: TestClient,
    publisher: MemoryPublisher,
    path: str,
    headers: dict[str, str],
    method: str,
) -> None:
    refused = client.request(method, path, content=sample_bytes(), headers=headers)
    unknown = client.request(method, "/no/such/path", content=sample_bytes(), headers=headers)
    assert refused.status_code == unknown.status_code == 404
    assert refused.content == unknown.content
    assert dict(refused.headers) == dict(unknown.headers)
    assert not publisher.topics  # never reaches Kafka


def test_with_the_token_only_post_is_allowed(client: TestClient) -> None:
    response = client.get(f"{WEBHOOK_PATH}/{TOKEN}")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_tokens_never_reach_logs_or_metrics(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post(f"{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes())
        client.post(WEBHOOK_PATH, content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
        client.post(f"{WEBHOOK_PATH}/{TOKEN}x", content=b"{}")
        client.post(f"{WEBHOOK_PATH}/{TOKEN}", content=b"x" * (2 * 1024 * 1024))
    text = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("bridge", "uvicorn"))
    )
    assert "notification stored" in text
    assert TOKEN not in text
    assert TOKEN not in client.get("/metrics").text


def test_repeated_failures_from_one_address_get_429_the_valid_token_never(
    publisher: MemoryPublisher, tmp_path: Path
) -> None:
    settings = load_settings(
        auth_tokens=TOKEN, allow_unauthenticated=False, auth_failure_limit=3, spool_dir=tmp_path
    )
    with TestClient(create_app(settings, publisher)) as client:
        for _ in range(3):
            assert client.post(f"{WEBHOOK_PATH}/guess", content=b"{}").status_code == 404
        limited = client.post(f"{WEBHOOK_PATH}/guess", content=b"{}")
        assert limited.status_code == 429
        assert 0 < int(limited.headers["retry-after"]) <= 61
        # Only failures are throttled: the valid token from the same address is served.
        assert client.post(f"{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes()).status_code == 200
        assert client.post(f"{WEBHOOK_PATH}/guess", content=b"{}").status_code == 429
    assert len(publisher.topics["airudder.call"]) == 1


def test_serving_without_a_token_must_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_ALLOW_UNAUTHENTICATED")
    with pytest.raises(ConfigError, match="BRIDGE_AUTH_TOKENS"):
        create_app(load_settings(), MemoryPublisher())


# -- over a real socket -------------------------------------------------------------------------


def serve(tmp_path: Path, **extra: object) -> Iterator[str]:
    settings = load_settings(
        auth_tokens=TOKEN,
        allow_unauthenticated=False,
        spool_dir=tmp_path,
        port=free_port(),
        **extra,
    )
    for running in run_server(settings, MemoryPublisher()):
        yield running.url


@pytest.mark.parametrize(
    ("extra", "forwarded", "status"),
    [
        ({"allowed_cidrs": "127.0.0.1/32"}, None, 200),
        ({"allowed_cidrs": "10.0.0.0/8"}, None, 404),
        ({"allowed_cidrs": "10.0.0.0/8"}, "10.1.2.3", 404),  # proxy not trusted
        ({"allowed_cidrs": "10.0.0.0/8", "trusted_proxies": "127.0.0.1"}, "10.1.2.3", 200),
        ({"allowed_cidrs": "10.0.0.0/8", "trusted_proxies": "127.0.0.1"}, "192.0.2.1", 404),
    ],
)
def test_the_allow_list_sees_through_trusted_proxies_only(
    tmp_path: Path, extra: dict[str, str], forwarded: str | None, status: int
) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    for url in serve(tmp_path, **extra):
        response = httpx2.post(
            f"{url}{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes(), headers=headers
        )
        assert response.status_code == status


def test_a_trickling_body_is_cut_and_does_not_starve_others(tmp_path: Path) -> None:
    for url in serve(tmp_path, body_timeout=1.0):
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(
                f"POST {WEBHOOK_PATH}/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
                'Content-Length: 5000\r\n\r\n{"type"'.encode()
            )
            started = time.monotonic()
            fast = httpx2.post(f"{url}{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes())
            assert fast.status_code == 200
            assert time.monotonic() - started < 0.5  # served while the slow one waits
            slow.settimeout(5)
            answer = slow.recv(1000)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408")
        assert 0.8 < waited < 3


def test_a_client_gone_before_its_body_ends_frees_its_slot_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for url in serve(tmp_path):
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port)) as gone:
            gone.sendall(
                f"POST {WEBHOOK_PATH}/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
                'Content-Length: 5000\r\n\r\n{"type"'.encode()
            )
            time.sleep(0.2)
        time.sleep(0.3)
        metrics = httpx2.get(f"{url}/metrics").text
        assert 'bridge_rejected_total{reason="client_disconnected"} 1.0' in metrics
        assert "bridge_in_flight 0.0" in metrics
        assert (
            httpx2.post(f"{url}{WEBHOOK_PATH}/{TOKEN}", content=sample_bytes()).status_code == 200
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_https_when_a_certificate_is_configured(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    settings = load_settings(
        auth_tokens=TOKEN,
        allow_unauthenticated=False,
        spool_dir=tmp_path,
        port=free_port(),
        tls_certfile=tmp_path / "cert.pem",
        tls_keyfile=tmp_path / "key.pem",
    )
    servers = run_server(settings, MemoryPublisher())
    next(servers)  # started; run_server's URL says http, but the listener speaks TLS
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        url = f"https://127.0.0.1:{settings.port}{WEBHOOK_PATH}/{TOKEN}"
        assert httpx2.post(url, content=sample_bytes(), verify=context).status_code == 200
        with pytest.raises(httpx2.ConnectError):  # a client that does not trust the cert
            httpx2.post(url, content=sample_bytes())
    finally:
        with pytest.raises(StopIteration):
            next(servers)


def test_wrong_tokens_cannot_be_told_apart_by_response_time(client: TestClient) -> None:
    """A guess with the right prefix takes as long as any other wrong guess."""
    near = f"{WEBHOOK_PATH}/{TOKEN[:-1]}X"
    far = f"{WEBHOOK_PATH}/{'Z' * len(TOKEN)}"
    timings: dict[str, list[float]] = {near: [], far: []}
    for _ in range(300):  # interleaved, so drift of the machine hits both alike
        for path in (near, far):
            started = time.perf_counter()
            client.post(path, content=b"{}")
            timings[path].append(time.perf_counter() - started)
    near_median = statistics.median(timings[near])
    far_median = statistics.median(timings[far])
    assert abs(near_median - far_median) < 0.15 * max(near_median, far_median) + 50e-6


def test_kafka_security_settings_become_client_options(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    options = kafka_options(
        load_settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="bridge",
            kafka_sasl_password="pw",
            kafka_ssl_cafile=tmp_path / "ca.pem",
        )
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "bridge"
    assert options["sasl_plain_password"] == "pw"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert "ssl_context" not in kafka_options(load_settings())


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "BRIDGE_KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "BRIDGE_KAFKA_SASL_USERNAME",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "SCRAM-SHA-256",
                "kafka_sasl_username": "u",
            },
            "BRIDGE_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_mechanism": "PLAIN"}, "BRIDGE_KAFKA_SECURITY_PROTOCOL"),
        ({"tls_certfile": "/etc/hostname"}, "BRIDGE_TLS_KEYFILE"),
        ({"kafka_ssl_cafile": "/no/such/file.pem"}, "BRIDGE_KAFKA_SSL_CAFILE"),
        ({"allowed_cidrs": "10.0.0.0/33"}, "BRIDGE_ALLOWED_CIDRS"),
        ({"auth_tokens_file": "/no/such/tokens"}, "BRIDGE_AUTH_TOKENS"),
    ],
)
def test_security_settings_are_checked_at_start(settings: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**settings)
    assert variable in str(caught.value)


def test_a_password_from_a_file_and_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password_file=tmp_path / "pw",
    )
    assert settings.kafka_sasl_password.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)
