"""Security to Kafka, on Apache Kafka itself: SASL_SSL with SCRAM-SHA-512, TLS, mutual TLS.

One broker for the module, with every listener, and certificates made here (trustme): a CA
that issued the broker's certificate (for 127.0.0.1 only) and bridge's client certificate,
and a second CA nobody trusts. `bridge serve` and `bridge tail` run as a user runs them, as
processes configured by their BRIDGE_KAFKA_* variables alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import orjson
import pytest
import trustme

from bridge.devbrokers.launcher import KafkaCluster, KafkaSecurity
from bridge.http.app import WEBHOOK_PATH
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.notifications.routing import all_topics
from tests.helpers import require_apache_kafka, run_sync, sample, sample_bytes, wait_for_port

# One pytest-xdist worker runs the module: its secured node is started once.
pytestmark = [pytest.mark.kafka, pytest.mark.xdist_group("kafka-security")]

BRIDGE = [sys.executable, "-m", "bridge"]
TOKEN = "kafka-security-token-Hw4"
USER = "bridge"
# Random per run: a test that finds it in the output found a leak, not a coincidence.
PASSWORD = f"pw-{secrets.token_urlsafe(18)}"
CLIENT_CN = "bridge-client"
LISTENERS = ("SASL_SSL", "SSL", "MTLS")
# Every refusal is answered at once; this bounds a hang, far beyond a loaded machine's start.
REFUSAL_BOUND = 60


@dataclass(frozen=True)
class Certificates:
    ca: Path  # issued the broker's and bridge's certificates
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    stranger_ca: Path  # a CA nobody here trusts
    stranger: Path  # a client certificate it issued, with bridge's name
    stranger_key: Path

    def secrets(self) -> list[str]:
        """Text that must never be printed: the password (and the wrong one the refusal test
        gives, as near a secret as a typo), and every line of every key."""
        lines = [PASSWORD, PASSWORD[::-1], "PRIVATE KEY"]
        for key in (self.server_key, self.client_key, self.stranger_key):
            lines += [line for line in key.read_text().splitlines() if "-----" not in line]
        return lines


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    # For the address only, not "localhost": reaching the broker by that name is then a
    # name the certificate does not carry (the wrong-host test), on the same listener.
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN)
    stranger = stranger_ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN)
    names = ("ca", "server", "server.key", "client", "client.key", "stranger-ca", "stranger")
    pems = [folder / f"{name}.pem" for name in names] + [folder / "stranger.key.pem"]
    paths = Certificates(*pems)
    ca.cert_pem.write_to_path(paths.ca)
    stranger_ca.cert_pem.write_to_path(paths.stranger_ca)
    for leaf, chain, key in (
        (server, paths.server, paths.server_key),
        (client, paths.client, paths.client_key),
        (stranger, paths.stranger, paths.stranger_key),
    ):
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
    return paths


@pytest.fixture(scope="module")
def cluster(certificates: Certificates) -> Iterator[KafkaCluster]:
    """One Apache Kafka node with PLAINTEXT (for the test's own admin), SASL_SSL, SSL and
    MTLS listeners; the SCRAM user is created when its storage is formatted."""
    require_apache_kafka()
    security = KafkaSecurity(
        certificate=certificates.server,
        private_key=certificates.server_key,
        ca=certificates.ca,
        scram_users={USER: PASSWORD},
        tls=True,
        mutual_tls=True,
    )
    kafka = KafkaCluster(brokers=1, security=security)
    try:
        kafka.start()
    except Exception as exc:  # noqa: BLE001 - the cause, with the broker's log, is the message
        kafka.close()
        pytest.fail(f"cannot start Apache Kafka with security: {exc}")
    yield kafka
    kafka.close()


@dataclass(frozen=True)
class Secured:
    """The module's broker and certificates, with this test's topics and folder."""

    cluster: KafkaCluster
    certificates: Certificates
    prefix: str
    folder: Path

    def port(self, listener: str) -> str:
        return self.cluster.bootstrap(listener).rsplit(":", 1)[1]

    def environment(self, listener: str, **changes: str | None) -> dict[str, str]:
        """A `bridge` process's environment for `listener`, as an operator writes it; a
        change to None removes that variable."""
        certificates = self.certificates
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env |= {
            "BRIDGE_AUTH_TOKENS": TOKEN,
            "BRIDGE_PORT": str(free_port()),
            "BRIDGE_SPOOL_DIR": str(self.folder / "spool"),
            "BRIDGE_TOPIC_PREFIX": self.prefix,
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": self.cluster.bootstrap(listener),
            "BRIDGE_KAFKA_CONNECT_TIMEOUT": "20",
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if listener == "SASL_SSL" else "SSL",
            "BRIDGE_KAFKA_SSL_CAFILE": str(certificates.ca),
        }
        if listener == "SASL_SSL":
            env |= {
                "BRIDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "BRIDGE_KAFKA_SASL_USERNAME": USER,
                "BRIDGE_KAFKA_SASL_PASSWORD": PASSWORD,
            }
        if listener == "MTLS":
            env |= {
                "BRIDGE_KAFKA_SSL_CERTFILE": str(certificates.client),
                "BRIDGE_KAFKA_SSL_KEYFILE": str(certificates.client_key),
            }
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def assert_no_secret(self, output: str) -> None:
        leaked = [text for text in self.certificates.secrets() if text in output]
        assert not leaked, f"{len(leaked)} secret line(s) printed"  # not the secrets themselves


@pytest.fixture
def secured(cluster: KafkaCluster, certificates: Certificates, tmp_path: Path) -> Secured:
    """A fresh topic prefix per test, its topics created (the broker creates none on use)."""
    prefix = f"s{uuid.uuid4().hex[:10]}."
    run_sync(create_topics_and_wait(cluster.bootstrap(), all_topics(prefix), partitions=1))
    return Secured(cluster, certificates, prefix, tmp_path)


@pytest.mark.parametrize("listener", LISTENERS)
def test_bridge_serve_publishes_and_bridge_tail_reads_through_the_listener(
    listener: str, secured: Secured
) -> None:
    # At debug, the most bridge ever logs: still no secret in it.
    env = secured.environment(listener, BRIDGE_LOG_LEVEL="debug")
    log = secured.folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*BRIDGE, "serve"], env=env, stdout=out, stderr=out)
    try:
        wait_for_port(int(env["BRIDGE_PORT"]), 60, process, log)
        response = httpx2.post(
            f"http://127.0.0.1:{env['BRIDGE_PORT']}{WEBHOOK_PATH}",
            content=sample_bytes("call"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert (response.status_code, response.content) == (200, b"{}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(30) == 0, log.read_text()[-3000:]
        finally:
            process.kill()
    served = log.read_text()
    # Stored in Kafka, not spooled: a 200 alone would not tell.
    assert '"outcome":"stored"' in served, served[-3000:]
    tail = subprocess.run(
        [*BRIDGE, "tail", "--type", "call", "--from-beginning", "--until-idle", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert tail.returncode == 0, tail.stderr
    [line] = tail.stdout.splitlines()
    document = orjson.loads(line)
    assert document["topic"] == f"{secured.prefix}call"
    assert document["notification"] == sample("call")
    secured.assert_no_secret(served + tail.stdout + tail.stderr)


@dataclass(frozen=True)
class Refusal:
    name: str
    listener: str
    changes: Callable[[Secured], dict[str, str | None]]
    setting: str  # the variable the one line must name
    why: str  # and the words that say why


REFUSALS = [
    Refusal(
        "wrong password",
        "SASL_SSL",
        lambda _: {"BRIDGE_KAFKA_SASL_PASSWORD": PASSWORD[::-1]},
        "BRIDGE_KAFKA_SASL_PASSWORD",
        "refused user 'bridge' with SCRAM-SHA-512",
    ),
    Refusal(
        "unknown user",
        "SASL_SSL",
        lambda _: {"BRIDGE_KAFKA_SASL_USERNAME": "mallory"},
        "BRIDGE_KAFKA_SASL_USERNAME",
        "refused user 'mallory'",
    ),
    Refusal(
        "a mechanism the broker does not offer",
        "SASL_SSL",
        lambda _: {"BRIDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
        "BRIDGE_KAFKA_SASL_MECHANISM",
        "does not offer SCRAM-SHA-256",
    ),
    Refusal(
        "a broker certificate from an untrusted CA",
        "SSL",
        lambda s: {"BRIDGE_KAFKA_SSL_CAFILE": str(s.certificates.stranger_ca)},
        "BRIDGE_KAFKA_SSL_CAFILE",
        "unable to get local issuer certificate",
    ),
    Refusal(
        "the system's CAs alone, over SASL_SSL",
        "SASL_SSL",
        lambda _: {"BRIDGE_KAFKA_SSL_CAFILE": None},
        "BRIDGE_KAFKA_SSL_CAFILE",
        "unset, so the system's CAs",
    ),
    Refusal(
        # The certificate is for 127.0.0.1; localhost is the same listener by another name.
        "a name the certificate does not carry",
        "SSL",
        lambda s: {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"localhost:{s.port('SSL')}"},
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS",
        "Hostname mismatch, certificate is not valid for 'localhost'",
    ),
    Refusal(
        "a client certificate from an untrusted CA",
        "MTLS",
        lambda s: {
            "BRIDGE_KAFKA_SSL_CERTFILE": str(s.certificates.stranger),
            "BRIDGE_KAFKA_SSL_KEYFILE": str(s.certificates.stranger_key),
        },
        "BRIDGE_KAFKA_SSL_CERTFILE",
        "refused the client certificate",
    ),
    Refusal(
        "no client certificate",
        "MTLS",
        lambda _: {"BRIDGE_KAFKA_SSL_CERTFILE": None, "BRIDGE_KAFKA_SSL_KEYFILE": None},
        "BRIDGE_KAFKA_SSL_CERTFILE",
        "requires a client certificate",
    ),
    Refusal(
        "a key that is not the certificate's",
        "MTLS",
        lambda s: {"BRIDGE_KAFKA_SSL_KEYFILE": str(s.certificates.stranger_key)},
        "BRIDGE_KAFKA_SSL_KEYFILE",
        "cannot load it",
    ),
    Refusal(
        "plain text to a TLS listener",
        "SSL",
        lambda _: {"BRIDGE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
        "BRIDGE_KAFKA_SECURITY_PROTOCOL",
        "closed the connection unanswered",
    ),
]


@pytest.mark.parametrize("command", ["serve", "tail"])
@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.name for r in REFUSALS])
def test_a_refusal_stops_the_start_with_one_line_naming_the_setting(
    refusal: Refusal, command: str, secured: Secured
) -> None:
    if "localhost" in refusal.name:
        addresses = {info[4][0] for info in socket.getaddrinfo("localhost", None)}
        assert "127.0.0.1" in addresses, "this test needs localhost to be 127.0.0.1"
    env = secured.environment(refusal.listener, **refusal.changes(secured))
    arguments = ["--until-idle", "1"] if command == "tail" else []
    result = subprocess.run(
        [*BRIDGE, command, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSAL_BOUND,  # a hang fails here
        check=False,
    )
    assert result.returncode != 0
    # At the default log level, what an operator sees: one line, nothing else.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("bridge: ")
    assert refusal.setting in line
    assert refusal.why in line
    secured.assert_no_secret(result.stdout + result.stderr)
