"""End to end against the real broker: HTTP in, Kafka records out."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx2
import orjson
import pytest

from bridge.commands.tail import Decoder
from bridge.http.app import WEBHOOK_PATH
from bridge.http.ports import free_port
from bridge.kafka.admin import Creation, TopicSpec, create_topics, create_topics_and_wait
from bridge.kafka.client import consume_until_idle, reading, stop_within
from bridge.kafka.publish import KafkaPublisher
from bridge.notifications.record import Record
from bridge.notifications.routing import all_topics
from bridge.settings import Settings, load_settings
from tests.helpers import Broker, RunningServer, run_server, run_sync, sample, sample_bytes


@pytest.mark.kafka
async def test_each_type_lands_in_its_topic_keyed_and_rebuilt_exactly(
    server: RunningServer, broker: Broker
) -> None:
    prefix = server.settings.topic_prefix
    async with httpx2.AsyncClient(base_url=server.url) as client:
        for kind in ("call", "waba_template", "chatbot"):
            response = await client.post(WEBHOOK_PATH, content=sample_bytes(kind))
            assert (response.status_code, response.content) == (200, b"{}")
        response = await client.post(WEBHOOK_PATH, content=b'{"type": "call"')
        assert response.status_code == 200
    decoder = Decoder()
    for kind in ("call", "waba_template", "chatbot"):
        [record] = await broker.consume([f"{prefix}{kind}"])
        assert record.key == b"12345.0"
        doc = decoder.document(record)
        assert doc["notification"] == sample(kind)
        assert doc["headers"]["notification-type"] == kind
    [dead] = await broker.consume([f"{prefix}dlq"])
    assert dead.value == b'{"type": "call"'
    assert dict(dead.headers)["dlq-reason"] == b"not-json"


@pytest.mark.kafka
async def test_each_cases_history_keeps_the_order_of_acknowledgement(
    server: RunningServer, broker: Broker
) -> None:
    cases, per_case = 40, 8
    template = sample("call")

    async def post_history(client: httpx2.AsyncClient, case: int) -> None:
        for step in range(per_case):  # one after another, as the vendor does for one case
            data = {**template, "callee": {**template["callee"], "case_id": f"case-{case}"}}
            data["call"] = {**template["call"], "call_id": f"{case}-{step}"}
            response = await client.post(WEBHOOK_PATH, content=orjson.dumps(data))
            assert response.status_code == 200

    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        await asyncio.gather(*(post_history(client, case) for case in range(cases)))

    topic = f"{server.settings.topic_prefix}call"
    records = await broker.consume([topic])
    history: dict[bytes, list[str]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    decoder = Decoder()
    for record in records:  # in partition order
        assert record.key is not None
        history[record.key].append(decoder.document(record)["notification"]["call"]["call_id"])
        partition_of[record.key].add(record.partition)
    assert len(history) == cases
    for case in range(cases):
        key = f"case-{case}".encode()
        assert history[key] == [f"{case}-{step}" for step in range(per_case)]
        assert len(partition_of[key]) == 1
    assert len({p for parts in partition_of.values() for p in parts}) > 1  # keys spread out


@pytest.mark.kafka
def test_a_broker_that_goes_away_gets_503_with_retry_after_within_the_budget(
    broker: Broker,
) -> None:
    with broker.another() as own_broker:
        settings = load_settings(
            kafka_bootstrap_servers=own_broker.bootstrap_servers,
            kafka_enable_idempotence=broker.idempotence,
            topic_prefix="gone.",
            port=free_port(),
            ack_timeout=1.0,
            spool_dir="",  # without a spool, 503 is the only honest answer
        )
        run_sync(create_topics_and_wait(own_broker.bootstrap_servers, all_topics("gone.")))
        servers = run_server(settings)
        running = next(servers)
        try:
            with httpx2.Client(base_url=running.url, timeout=15) as client:
                assert client.post(WEBHOOK_PATH, content=sample_bytes()).status_code == 200
                own_broker.stop()
                started = time.monotonic()
                response = client.post(WEBHOOK_PATH, content=sample_bytes("chatbot"))
                elapsed = time.monotonic() - started
        finally:
            with pytest.raises(StopIteration):
                next(servers)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert elapsed < 3


@pytest.mark.kafka
async def test_reading_until_idle_gets_every_record_from_the_oldest_and_names_missing_topics(
    kafka_settings: Settings,
) -> None:
    topic = f"{kafka_settings.topic_prefix}call"
    publisher = KafkaPublisher(kafka_settings)
    await publisher.start()
    try:
        for n in range(3):  # one key: one partition, in order
            await publisher.publish(Record(topic, b"case", b"%d" % n, []))
    finally:
        await publisher.stop(5)
    options = {"bootstrap_servers": kafka_settings.kafka_bootstrap_servers}
    records = await consume_until_idle(options, [topic], idle=1.0)
    assert [r.value for r in records] == [b"0", b"1", b"2"]
    absent = f"{kafka_settings.topic_prefix}absent"
    async with reading(kafka_settings, [absent, topic], from_beginning=False) as read:
        assert read.missing == [absent]
        assert [r async for r in read.records(idle=0.5)] == []  # from the end: nothing new


TIMEOUT = 30.0  # for a broker that answers: generous, the machine may be loaded


@pytest.fixture
def source(broker: Broker) -> dict[str, str]:
    """Client options for `create_topics` on the broker under test."""
    return {"bootstrap_servers": broker.bootstrap_servers}


@pytest.mark.kafka
async def test_creating_topics_tells_those_created_from_those_there(
    source: dict[str, str], topic_prefix: str
) -> None:
    first, second = (TopicSpec(f"{topic_prefix}{name}", 2, 1) for name in ("first", "second"))
    assert await create_topics(source, [first], timeout=TIMEOUT) == Creation([first.name])
    both = await create_topics(source, [second, first], timeout=TIMEOUT)
    assert both == Creation(created=[second.name], existed=[first.name])


@pytest.mark.kafka
async def test_the_configuration_of_a_topic_there_is_described_when_asked(
    broker: Broker, source: dict[str, str], topic_prefix: str
) -> None:
    if not broker.configs_described:
        pytest.skip(f"{broker.name} describes no topic configuration")
    spec = TopicSpec(f"{topic_prefix}kept", 1, 1, {"retention.ms": "3600000"})
    assert await create_topics(source, [spec], timeout=TIMEOUT, configs=True) == Creation(
        [spec.name]  # nothing to describe: the configuration is the one asked for
    )
    again = await create_topics(source, [spec], timeout=TIMEOUT, configs=True)
    assert again == Creation(existed=[spec.name], configs={spec.name: spec.config})


@pytest.mark.kafka
async def test_a_topic_the_broker_refuses_is_told_with_its_error_and_the_others_created(
    broker: Broker, source: dict[str, str], topic_prefix: str
) -> None:
    if not broker.topics_validated:
        pytest.skip(f"{broker.name} creates any topic asked for")
    bad = TopicSpec(f"{topic_prefix}bad", 1, 7)  # more replicas than the broker's one
    good = TopicSpec(f"{topic_prefix}good", 1, 1)
    creation = await create_topics(source, [bad, good], timeout=TIMEOUT)
    assert (creation.created, creation.existed, list(creation.failed)) == (
        [good.name],
        [],
        [bad.name],
    )
    error = creation.failed[bad.name]
    assert (error.code, error.name) == (38, "InvalidReplicationFactorError")
    assert "7" in (error.message or "")


async def test_creating_topics_on_a_broker_that_never_answers_ends_at_the_timeout() -> None:
    held: list[asyncio.StreamWriter] = []  # accepted, kept open, never answered

    def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await create_topics(
                {"bootstrap_servers": f"127.0.0.1:{port}"}, [TopicSpec("t", 1, 1)], timeout=0.5
            )
        assert held  # it did connect: the time went waiting for an answer
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class _StopLetsOutACancellation:
    """A consumer whose fetch task, cancelled by `stop()` while Kafka is away, lets its
    CancelledError out of `stop()` (aiokafka's fetcher in its retry back-off)."""

    async def stop(self) -> None:
        raise asyncio.CancelledError


class _StopHangs:
    async def stop(self) -> None:
        await asyncio.sleep(60)


async def test_a_cancellation_let_out_of_a_clients_stop_ends_neither_the_stop_nor_its_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await stop_within(_StopLetsOutACancellation(), 1.0)  # returns: the caller goes on
    with caplog.at_level("WARNING"):
        began = time.monotonic()
        await stop_within(_StopHangs(), 0.2)  # and one that hangs is given up on
    assert time.monotonic() - began < 1.0
    assert "_StopHangs did not stop within 0.2s" in caplog.text


async def test_a_cancellation_of_the_caller_goes_on_out_of_a_stop() -> None:
    stopping = asyncio.create_task(stop_within(_StopHangs(), 30.0))
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
