"""End to end against the real broker: HTTP in, Kafka records out."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx2
import orjson
import pytest

from bridge.app import WEBHOOK_PATH
from bridge.broker import free_port
from bridge.kafka import consume_until_idle, create_topics_and_wait, reading
from bridge.publish import KafkaPublisher
from bridge.record import Record
from bridge.routing import all_topics
from bridge.settings import Settings, load_settings
from bridge.tail import Decoder
from tests.helpers import Broker, RunningServer, run_server, run_sync, sample, sample_bytes


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
