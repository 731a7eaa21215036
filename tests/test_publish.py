"""One contract, two implementations: the in-memory publisher and the Kafka one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bridge.errors import BrokerUnavailable, PublishError
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.publish import KafkaPublisher, MemoryPublisher, Publisher
from bridge.notifications.record import Record
from bridge.settings import Settings, load_settings
from tests.helpers import Broker, broker_settings, connections_to, frozen

Stored = tuple[bytes | None, bytes, dict[str, bytes]]


@dataclass
class Subject:
    publisher: Publisher
    topic: str
    read: Callable[[], Awaitable[list[Stored]]]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("tansu", marks=pytest.mark.kafka),
        pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.apache]),
    ]
)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = MemoryPublisher()
        topic = "contract"

        async def read_memory() -> list[Stored]:
            return [(m.key, m.value, dict(m.headers)) for m in memory.topics[topic]]

        await memory.start()
        yield Subject(memory, topic, read_memory)
        await memory.stop(1)
        return
    # The brokers by name: a parametrised fixture cannot be asked for from another's params.
    broker: Broker = request.getfixturevalue(f"{request.param}_broker")
    settings = broker_settings(
        broker, request.getfixturevalue("topic_prefix"), request.getfixturevalue("tmp_path")
    )
    kafka = KafkaPublisher(settings)
    topic = f"{settings.topic_prefix}call"

    async def read_kafka() -> list[Stored]:
        records = await broker.consume([topic])
        return [(r.key, r.value, dict(r.headers)) for r in records]

    await kafka.start()
    yield Subject(kafka, topic, read_kafka)
    await kafka.stop(5)


async def test_publish_returns_where_the_record_was_stored(subject: Subject) -> None:
    first = await subject.publisher.publish(Record(subject.topic, b"case-1", b"v1", [("h", b"1")]))
    second = await subject.publisher.publish(Record(subject.topic, b"case-1", b"v2", []))
    assert first.topic == second.topic == subject.topic
    assert first.partition == second.partition  # same key, same partition
    assert second.offset == first.offset + 1


async def test_published_records_are_read_back_with_key_and_headers(subject: Subject) -> None:
    await subject.publisher.publish(
        Record(subject.topic, b"case-2", b"value", [("event-id", b"e1")])
    )
    await subject.publisher.publish(Record(subject.topic, None, b"no key", []))
    records = await subject.read()  # two partitions may be read in either order
    assert sorted(records, key=lambda r: r[1]) == [
        (None, b"no key", {}),
        (b"case-2", b"value", {"event-id": b"e1"}),
    ]


async def test_publish_after_stop_is_a_publish_error(subject: Subject) -> None:
    await subject.publisher.stop(5)
    with pytest.raises(PublishError):
        await subject.publisher.publish(Record(subject.topic, b"k", b"v", []))


async def test_an_unreachable_broker_is_reported_at_start_in_bounded_time() -> None:
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        kafka_connect_timeout=1.5,
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(BrokerUnavailable, match="BRIDGE_KAFKA_BOOTSTRAP_SERVERS"):
        await KafkaPublisher(settings).start()
    assert asyncio.get_running_loop().time() - started < 5


@pytest.mark.kafka
async def test_keys_land_where_kafkas_default_partitioner_puts_them(
    kafka_settings: Settings,
) -> None:
    topic = f"{kafka_settings.topic_prefix}partitioned"
    await create_topics_and_wait(kafka_settings.kafka_bootstrap_servers, [topic], 6)
    kafka = KafkaPublisher(kafka_settings)
    await kafka.start()
    try:
        keys = [f"case-{n}".encode() for n in range(40)] + [b"12345.0", b"\xff" * 17]
        landed = [(await kafka.publish(Record(topic, key, b"v", []))).partition for key in keys]
    finally:
        await kafka.stop(5)
    everywhere = list(range(6))
    assert landed == [DefaultPartitioner()(key, everywhere, everywhere) for key in keys]
    assert len(set(landed)) > 1


@pytest.mark.kafka
async def test_a_stop_on_a_frozen_broker_ends_in_time_and_leaves_no_connection_open(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    with broker.another() as own:
        port = int(own.bootstrap_servers.rsplit(":", 1)[1])
        settings = load_settings(
            kafka_bootstrap_servers=own.bootstrap_servers,
            kafka_enable_idempotence=broker.idempotence,
            topic_prefix="frozen.",
        )
        topic = "frozen.call"
        await create_topics_and_wait(own.bootstrap_servers, [topic])

        async def started() -> tuple[KafkaPublisher, AIOKafkaProducer]:
            kafka = KafkaPublisher(settings)
            await kafka.start()
            await kafka.publish(Record(topic, b"case", b"before", []))
            assert connections_to(port) >= 1
            return kafka, kafka._producer  # aiokafka's producer, to see what is left of it

        async def held_by(
            kafka: KafkaPublisher, producer: AIOKafkaProducer
        ) -> asyncio.Task[object]:
            held = asyncio.create_task(kafka.publish(Record(topic, b"case", b"held", [])))
            await asyncio.sleep(0.3)
            assert not held.done()
            assert producer._sender._in_flight  # sent, and never answered
            return held

        async def nothing_left_of(producer: AIOKafkaProducer) -> None:
            sender = producer._sender.sender_task
            await asyncio.wait({sender}, timeout=1.0)
            assert sender.cancelled()  # and with it the requests it had in flight
            assert producer.client._sync_task is None or producer.client._sync_task.done()
            assert connections_to(port) == 0
            await asyncio.sleep(0.2)  # the callbacks of a sender that ended in error have run
            # No "Exception in callback" from a request putting its batch back (aiokafka's
            # KeyError when its connection is aborted under it).
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        # Past its timeout (aiokafka's stop() waits for the held record's acknowledgement).
        kafka, producer = await started()
        with frozen(own):
            held = await held_by(kafka, producer)
            began = loop.time()
            await kafka.stop(1.0)
            assert loop.time() - began < 2.0
            with pytest.raises(PublishError):  # answered, not left waiting for 30 s
                await asyncio.wait_for(held, 1.0)
            await nothing_left_of(producer)

        # Its caller cancelled (a lifespan cut short).
        kafka, producer = await started()
        with frozen(own):
            held = await held_by(kafka, producer)
            stopping = asyncio.create_task(kafka.stop(30.0))
            await asyncio.sleep(0.3)
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopping
            assert await kafka.check() == "not started"  # the aborted producer is not used again
            with pytest.raises(PublishError):
                await asyncio.wait_for(held, 1.0)
            await nothing_left_of(producer)
