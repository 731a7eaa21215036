"""One contract, two implementations: the in-memory publisher and the Kafka one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiokafka.partitioner import DefaultPartitioner

from bridge.broker import free_port
from bridge.errors import BrokerUnavailable, PublishError
from bridge.kafka import create_topics_and_wait
from bridge.publish import KafkaPublisher, MemoryPublisher, Publisher
from bridge.record import Record
from bridge.settings import Settings, load_settings
from tests.helpers import Broker, broker_settings, consume

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


class _Counted:
    """Counts the calls aiokafka's producer gets, per method, and passes them on."""

    def __init__(self, publisher: KafkaPublisher, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {"send": 0, "send_batch": 0}
        producer = publisher._producer
        for name in self.calls:
            method = getattr(producer, name)
            monkeypatch.setattr(producer, name, self._counting(name, method))

    def _counting(
        self, name: str, method: Callable[..., Awaitable[object]]
    ) -> Callable[..., Awaitable[object]]:
        async def counted(*args: object, **kwargs: object) -> object:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def _started(settings: Settings, topic: str) -> KafkaPublisher:
    """A publisher that knows `topic`'s partitions (its first record told it)."""
    kafka = KafkaPublisher(settings)
    await kafka.start()
    await kafka.publish(Record(topic, b"warm", b"first", []))
    return kafka


@pytest.mark.kafka
async def test_the_records_of_one_turn_go_as_one_batch_per_partition(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"{kafka_settings.topic_prefix}call"
    kafka = await _started(kafka_settings, topic)
    counted = _Counted(kafka, monkeypatch)
    try:
        values = [f"v{n}".encode() for n in range(30)]
        deliveries = await asyncio.gather(
            *(kafka.publish(Record(topic, b"case-7", v, [("n", v)])) for v in values)
        )
    finally:
        await kafka.stop(5)
    assert counted.calls == {"send": 0, "send_batch": 1}
    first = deliveries[0].offset  # each answered with its own place, in the order sent
    assert [(d.partition, d.offset) for d in deliveries] == [
        (deliveries[0].partition, first + n) for n in range(30)
    ]
    assert len(await consume_values(kafka_settings, topic, b"case-7")) == 30


@pytest.mark.kafka
async def test_a_case_keeps_its_order_across_full_batches(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = kafka_settings.model_copy(update={"kafka_max_batch_size": 1024})
    topic = f"{settings.topic_prefix}call"
    kafka = await _started(settings, topic)
    counted = _Counted(kafka, monkeypatch)
    values = [f"{n:04d}".encode() * 40 for n in range(60)]  # 160 bytes: ~6 a batch
    try:
        waves = [values[:25], values[25:]]  # the second comes while the first is in flight
        first = asyncio.gather(*(kafka.publish(Record(topic, b"case-8", v, [])) for v in waves[0]))
        await asyncio.sleep(0)
        second = asyncio.gather(*(kafka.publish(Record(topic, b"case-8", v, [])) for v in waves[1]))
        deliveries = [*await first, *await second]
    finally:
        await kafka.stop(5)
    assert counted.calls["send"] == 0
    assert counted.calls["send_batch"] >= 10
    offsets = [d.offset for d in deliveries]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(values)
    assert await consume_values(settings, topic, b"case-8") == values


@pytest.mark.kafka
async def test_a_request_given_up_before_its_batch_left_is_not_written(
    kafka_settings: Settings,
) -> None:
    topic = f"{kafka_settings.topic_prefix}call"
    kafka = await _started(kafka_settings, topic)
    try:
        gone = asyncio.create_task(kafka.publish(Record(topic, b"case-9", b"given up", [])))
        kept = asyncio.create_task(kafka.publish(Record(topic, b"case-9", b"kept", [])))
        await asyncio.sleep(0)  # both queued for the partition's batch, not sent yet
        gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await kafka.stop(5)
    assert await consume_values(kafka_settings, topic, b"case-9") == [b"kept"]


@pytest.mark.kafka
async def test_every_queued_request_is_answered_when_the_publisher_stops(
    kafka_settings: Settings,
) -> None:
    topic = f"{kafka_settings.topic_prefix}call"
    kafka = await _started(kafka_settings, topic)
    sent = [
        asyncio.create_task(kafka.publish(Record(topic, f"case-{n}".encode(), b"v", [])))
        for n in range(50)
    ]
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await kafka.stop(5)
        answers = await asyncio.gather(*sent, return_exceptions=True)
    # Written, or an error the pipeline spools: never left waiting.
    assert all(not isinstance(a, BaseException) or isinstance(a, PublishError) for a in answers)


async def consume_values(settings: Settings, topic: str, key: bytes) -> list[bytes]:
    """The values stored under `key` in `topic`, in the order of their partition."""
    records = await consume(settings.kafka_bootstrap_servers, [topic], idle=1.5)
    return [r.value for r in records if r.key == key and r.value is not None]
