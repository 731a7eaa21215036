"""The topics bridge writes, on Apache Kafka (topic auto-creation off, ACLs through
StandardAuthorizer): refusal to start, creation when asked, writes the broker refuses, a topic
deleted while bridge runs. And the pipeline's side of refusals, without a broker."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import orjson
import pytest
import trustme
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import CreateAclsRequest

from bridge.commands.redrive import Filters, redrive
from bridge.container import build_pipeline
from bridge.devbrokers.launcher import KafkaCluster, KafkaSecurity, kafka_missing
from bridge.errors import BrokerUnavailable, PublishRefused, TopicUnavailable
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.client import consume_until_idle
from bridge.kafka.publish import Delivery, MemoryPublisher
from bridge.kafka.topics import create_command, ensure_topics
from bridge.notifications.record import Record
from bridge.notifications.routing import all_topics
from bridge.pipeline import Pipeline
from bridge.settings import Settings, load_settings
from bridge.state.spool import Spool
from tests.helpers import run_server, run_sync, sample, sample_bytes

# One pytest-xdist worker runs the module: its node with ACLs is started once.
pytestmark = pytest.mark.xdist_group("kafka-acls")

USER, PASSWORD = "bridge", "bridge-secret"  # SCRAM user of the SASL_SSL listener
TOPIC, CLUSTER = 2, 4  # Kafka's ACL resource types
DESCRIBE, WRITE = 8, 4  # ... operations
LITERAL, ALLOW = 3, 3  # ... pattern type, permission


# -- without a broker ---------------------------------------------------------------------------


def test_the_command_creates_every_missing_topic_as_bridge_needs_it() -> None:
    settings = load_settings(kafka_bootstrap_servers="k1:9092,k2:9092")
    one = create_command(settings, ["airudder.call"])
    assert one == (
        "kafka-topics.sh --bootstrap-server k1:9092,k2:9092 --create --topic airudder.call "
        "--partitions 6 --replication-factor 3 --config min.insync.replicas=2 "
        "--config max.message.bytes=1114112"
    )
    several = create_command(settings, ["a.call", "a.dlq"])
    assert several.startswith("for t in a.call a.dlq; do kafka-topics.sh ")
    assert "--topic $t --partitions 6" in several
    assert several.endswith("; done")
    small = load_settings(kafka_topic_replication_factor=1, kafka_topic_partitions=1)
    assert "--replication-factor 1 --config min.insync.replicas=1 " in create_command(small, ["t"])


class RefusingPublisher(MemoryPublisher):
    """A broker that refuses writes to some topics, as an ACL does."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused

    async def publish(self, record: Record) -> Delivery:
        if record.topic in self.refused:
            message = f"TopicAuthorizationFailedError: {record.topic}"
            raise PublishRefused(message, "topic_authorization")
        return await super().publish(record)


@pytest.fixture
async def refusing(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, RefusingPublisher, Spool]]:
    """A pipeline with a spool, on a broker that refuses every write to p.chatbot."""
    settings = load_settings(topic_prefix="p.", spool_dir=tmp_path)
    publisher = RefusingPublisher({"p.chatbot"})
    spool = Spool(tmp_path, settings.spool_max_bytes)
    await spool.open()
    await publisher.start()
    try:
        yield build_pipeline(settings, publisher, spool), publisher, spool
    finally:
        await spool.close()


async def test_a_refused_write_is_a_503_never_spooled_named_in_readiness_and_counted(
    refusing: tuple[Pipeline, RefusingPublisher, Spool],
) -> None:
    pipeline, publisher, spool = refusing
    for _ in range(2):
        with pytest.raises(PublishRefused) as refused:
            await pipeline.accept(sample_bytes("chatbot"))
        assert (refused.value.status, refused.value.retriable) == (503, True)
    assert spool.depth == 0
    assert pipeline.kafka_up  # the broker answers: other topics go on
    assert (await pipeline.accept(sample_bytes("call"))).outcome == "stored"
    ready, checks = await pipeline.readiness()
    assert ready
    assert checks["topics"].startswith("p.chatbot: last write refused (TopicAuthorization")
    assert pipeline.metrics.kafka_refused.labels("topic_authorization")._value.get() == 2
    assert pipeline.unavailable_topics == 1
    # Kafka down: even then the refused topic is not spooled (it would drain into the
    # refusal), while the others are.
    pipeline.kafka_up = False
    with pytest.raises(PublishRefused):
        await pipeline.accept(sample_bytes("chatbot"))
    assert (await pipeline.accept(sample_bytes("waba_template"))).outcome == "spooled"
    pipeline.kafka_up = True
    assert await pipeline.drain_once() == 1  # the case's spooled entry goes first
    # Allowed again: stored, and no longer named.
    publisher.refused.clear()
    assert (await pipeline.accept(sample_bytes("chatbot"))).outcome == "stored"
    assert (await pipeline.readiness())[1]["topics"] == "ok"


async def test_spooled_entries_the_broker_refuses_stay_and_do_not_hold_up_the_others(
    refusing: tuple[Pipeline, RefusingPublisher, Spool],
) -> None:
    pipeline, publisher, spool = refusing
    await spool.append(Record("p.chatbot", b"1", b"refused", []))
    await spool.append(Record("p.call", b"2", b"taken", []))
    assert await pipeline.drain_once() == 1
    assert [r.value for r in publisher.topics["p.call"]] == [b"taken"]
    with pytest.raises(PublishRefused):  # only refused ones left: the drain backs off
        await pipeline.drain_once()
    assert spool.depth == 1
    assert spool.quarantined == 0  # kept for when the broker takes it
    assert pipeline.kafka_up
    publisher.refused.clear()
    assert await pipeline.drain_once() == 1
    assert spool.depth == 0
    assert "p.chatbot" not in pipeline.topics.refused


# -- Apache Kafka ---------------------------------------------------------------------------------


def _certificates(directory: Path) -> KafkaSecurity:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(directory / "key.pem")
    cert.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    return KafkaSecurity(
        certificate=directory / "cert.pem",
        private_key=directory / "key.pem",
        ca=directory / "ca.pem",
        scram_users={USER: PASSWORD},
        super_users=(),  # ACLs on: User:bridge may do only what it is granted
    )


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Apache Kafka node with a SASL_SSL listener and ACLs, for this module."""
    missing = kafka_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI must run the Apache Kafka tests)")
        pytest.skip(missing)
    cluster = KafkaCluster(1, security=_certificates(tmp_path_factory.mktemp("certs")))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def _grant(kafka: KafkaCluster, operation: int, topic: str) -> None:
    async def create() -> None:
        host, port = kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
        connection = await create_conn(host, int(port))  # PLAINTEXT: the anonymous super user
        try:
            request = CreateAclsRequest(
                TOPIC, topic, LITERAL, f"User:{USER}", "*", operation, ALLOW
            )
            response = (await connection.send(request)).to_object()
        finally:
            connection.close()
        assert [r["error_code"] for r in response["creation_responses"]] == [0]

    run_sync(create())


def _sasl_settings(kafka: KafkaCluster, prefix: str, tmp_path: Path, **more: object) -> Settings:
    assert kafka.security is not None
    return load_settings(
        kafka_bootstrap_servers=kafka.bootstrap("SASL_SSL"),
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=kafka.security.ca,
        topic_prefix=prefix,
        spool_dir=tmp_path / "spool",
        port=free_port(),
        **more,
    )


def _wait_for(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.2)


def _waba(msg_id: str) -> bytes:
    data = sample("waba_template")
    data["waba_template"] = {**data["waba_template"], "msg_id": msg_id}
    return orjson.dumps(data)


@pytest.mark.apache  # its own Apache Kafka node with ACLs (the module fixture `kafka`)
def test_serve_refuses_to_start_in_one_line_naming_the_missing_topic_and_the_command(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    prefix = _prefix()
    run_sync(create_topics_and_wait(kafka.bootstrap_servers, [f"{prefix}call", f"{prefix}chatbot"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        BRIDGE_TOPIC_PREFIX=prefix,
        BRIDGE_AUTH_TOKENS="a-token",
        BRIDGE_SPOOL_DIR=str(tmp_path),
        BRIDGE_PORT=str(free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"bridge: topic {prefix}waba_template (and {prefix}dlq) does not ")
    assert (
        f"for t in {prefix}waba_template {prefix}dlq; do kafka-topics.sh --bootstrap-server "
        f"{kafka.bootstrap_servers} --create --topic $t --partitions 6 --replication-factor 3 "
        "--config min.insync.replicas=2 --config max.message.bytes=1114112; done"
    ) in line
    assert "BRIDGE_KAFKA_CREATE_TOPICS=true" in line


@pytest.mark.apache
async def test_the_create_setting_creates_what_is_missing_with_the_given_shape(
    kafka: KafkaCluster,
) -> None:
    prefix = _prefix()
    await create_topics_and_wait(kafka.bootstrap_servers, [f"{prefix}call"], partitions=2)
    settings = load_settings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=prefix,
        kafka_create_topics=True,
        kafka_topic_partitions=4,
        kafka_topic_replication_factor=1,
    )
    created = await ensure_topics(settings)
    assert created == [f"{prefix}chatbot", f"{prefix}waba_template", f"{prefix}dlq"]
    assert len(kafka.partitions(f"{prefix}call")) == 2  # what existed is left as it is
    for topic in created:
        states = kafka.partitions(topic)
        assert len(states) == 4
        assert {len(state.replicas) for state in states} == {1}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        wanted = {"min.insync.replicas": None, "max.message.bytes": None}
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"{prefix}dlq", configs=wanted)]
        )
    finally:
        await admin.close()
    entries = response.to_object()["resources"][0]["config_entries"]
    configs = {entry["config_names"]: entry["config_value"] for entry in entries}
    assert configs == {"min.insync.replicas": "1", "max.message.bytes": "1114112"}
    assert await ensure_topics(settings) == []  # all there now
    # More replicas than brokers: one line naming the setting.
    three = settings.model_copy(update={"topic_prefix": _prefix()})
    with pytest.raises(TopicUnavailable, match="BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR=3"):
        await ensure_topics(three.model_copy(update={"kafka_topic_replication_factor": 3}))


@pytest.mark.apache
async def test_a_write_the_acls_refuse_is_answered_503_never_200_shown_and_counted(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    prefix = _prefix()
    topics = all_topics(prefix)
    await create_topics_and_wait(kafka.bootstrap_servers, topics)
    for topic in topics:  # DESCRIBE on all four, WRITE on all but the chatbot topic
        _grant(kafka, DESCRIBE, topic)
        if not topic.endswith("chatbot"):
            _grant(kafka, WRITE, topic)
    settings = _sasl_settings(kafka, prefix, tmp_path)
    assert settings.kafka_enable_idempotence  # InitProducerId needs WRITE on some topic
    await ensure_topics(settings)  # starts: the topics are there and may be described
    servers = run_server(settings)
    running = next(servers)
    try:
        async with httpx2.AsyncClient(base_url=running.url, timeout=20) as client:
            hook = "/webhooks/airudder"
            assert (await client.post(hook, content=sample_bytes("call"))).status_code == 200
            for _ in range(3):
                refused = await client.post(hook, content=sample_bytes("chatbot"))
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "60"
                assert refused.json()["error"] == "kafka_refused"
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            body = ready.json()
            assert body["status"] == "degraded"
            assert body["checks"]["kafka"] == "ok"
            assert body["checks"]["topics"].startswith(f"{prefix}chatbot: last write refused")
            assert "TopicAuthorizationFailed" in body["checks"]["topics"]
            metrics = (await client.get("/metrics")).text
            assert 'bridge_kafka_refused_total{reason="topic_authorization"} 3.0' in metrics
            assert "bridge_kafka_topics_unavailable 1.0" in metrics
            assert re.search(r"^bridge_spool_depth 0\.0$", metrics, re.MULTILINE)
            assert 'outcome="spooled"' not in metrics

            _grant(kafka, WRITE, f"{prefix}chatbot")  # fixed: the vendor's retry is stored

            async def retried() -> int:
                return (await client.post(hook, content=sample_bytes("chatbot"))).status_code

            deadline = time.monotonic() + 30
            while (status := await retried()) != 200:
                assert status == 503
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            assert (await client.get("/readyz")).json()["checks"]["topics"] == "ok"
    finally:
        with pytest.raises(StopIteration):
            next(servers)
    records = await consume_until_idle(
        {"bootstrap_servers": kafka.bootstrap_servers}, [f"{prefix}chatbot"], idle=3.0
    )
    assert len(records) == 1  # the one answered 200, nothing of the refused ones


@pytest.mark.apache
async def test_a_topic_deleted_while_running_is_named_in_readiness_and_never_answered_200(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    prefix = _prefix()
    await create_topics_and_wait(kafka.bootstrap_servers, all_topics(prefix))
    settings = load_settings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=prefix,
        spool_dir=tmp_path / "spool",
        port=free_port(),
        ack_timeout=2.0,
    )
    servers = run_server(settings)
    running = next(servers)
    gone = f"{prefix}waba_template"
    try:
        async with httpx2.AsyncClient(base_url=running.url, timeout=20) as client:
            hook = "/webhooks/airudder"
            for kind in ("waba_template", "call"):
                assert (await client.post(hook, content=sample_bytes(kind))).status_code == 200
            assert (await client.get("/readyz")).json()["checks"]["topics"] == "ok"
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
            await admin.start()
            try:
                await admin.delete_topics([gone])
            finally:
                await admin.close()

            async def named() -> bool:
                checks = (await client.get("/readyz")).json()["checks"]
                return bool(checks["topics"] == f"{gone}: missing")

            deadline = time.monotonic() + 30
            while not await named():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            for n in range(3):  # new events (a retry of the stored one is a duplicate: 200)
                started = time.monotonic()
                response = await client.post(hook, content=_waba(f"after-{n}"))
                assert response.status_code == 503
                assert response.json()["error"] == "kafka_refused"
                assert time.monotonic() - started < 9  # within the vendor's 10 s
            assert (await client.post(hook, content=sample_bytes("chatbot"))).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert re.search(r'bridge_kafka_refused_total\{reason="topic_missing"\} [1-9]', metrics)
            assert re.search(r"^bridge_spool_depth 0\.0$", metrics, re.MULTILINE)
    finally:
        with pytest.raises(StopIteration):
            next(servers)


@pytest.mark.apache
async def test_redrive_names_a_dlq_it_may_describe_but_not_read(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    prefix = _prefix()
    await create_topics_and_wait(kafka.bootstrap_servers, [f"{prefix}dlq"])
    async with AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers) as producer:
        await producer.send_and_wait(f"{prefix}dlq", b"{}", headers=[("dlq-reason", b"x")])
    _grant(kafka, DESCRIBE, f"{prefix}dlq")  # and not READ
    settings = _sasl_settings(kafka, prefix, tmp_path)
    with pytest.raises(BrokerUnavailable) as refused:
        await redrive(settings, Filters())
    [line] = str(refused.value).splitlines()
    assert line.startswith(f"cannot read {prefix}dlq: TopicAuthorizationFailedError")
