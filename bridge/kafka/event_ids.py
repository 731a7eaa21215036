"""The event ids every process stored, shared through one topic: `<prefix>event-ids`.

Each process publishes the ids it stored (key: the id's 128-bit digest, value and timestamp:
when it was stored, in ms) in batches, off the request's path and after the record's own
acknowledgement, and follows the topic (no consumer group, every partition assigned) to learn
what the others stored. At start it reads the window back, from the offsets Kafka finds for
`now - window`, at most a partition's newest `dedup_max_entries` records (what memory keeps).
The topic is compacted (one record per id) and deletes what is older than the window, so it
holds about one window of ids whatever the load.

When the topic cannot take ids (deleted, writes refused, Kafka away), a batch goes to the
spool's table instead (`bridge.state.dedup`) and each process falls back to its own memory: nothing
waits on the topic beyond `SHARE_BUDGET`, off the request's path; `bridge_dedup_shared` says 0
and `bridge_dedup_unshared_total` counts the ids only this process knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from bridge.kafka.admin import TopicSpec, create_topics
from bridge.kafka.client import kafka_options, stop_within
from bridge.kafka.errors import UNREACHABLE, reason
from bridge.settings import Settings
from bridge.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

SUFFIX = "event-ids"
SHARE_EVERY = 0.1  # seconds between batches: the lag a retry at another process must beat
SHARE_BUDGET = 1.0  # a batch not acknowledged within this is kept by this process alone
RETRY_EVERY = 5.0  # seconds between attempts while the topic is unavailable
METADATA_WAIT = 3.0  # seconds to learn the topic's partitions before calling it missing
ID_DELIVERY_MS = 2000
FETCH_WAIT_MS = 100  # the broker answers a follower's fetch at least this often
# Records taken from the consumer at a time. A fetch brings up to 1 MB of a partition (~20,000
# ids); taken at once, its records were all decoded together, and reading a window back at
# start raised the process's peak memory by ~45 MB (make bench's overload: 159 MB against 112-122).
READ_BATCH = 2000
_MS = struct.Struct(">q")  # the value: when the id was stored, ms since the epoch

Learn = Callable[[bytes, float], bool]


def event_ids_topic(settings: Settings) -> TopicSpec:
    """The event-ids topic and its configuration, from the settings."""
    window_ms = str(max(1, round(settings.dedup_window * 1000)))
    return TopicSpec(
        f"{settings.topic_prefix}{SUFFIX}",
        # One partition: a few tens of bytes an id is little for one, and a follower reads
        # one log, in the order the ids were stored.
        1,
        config={
            "cleanup.policy": "compact,delete",
            "retention.ms": window_ms,
            # Retention and compaction act on closed segments: one closed per window keeps
            # the topic at about two windows of ids, not the default week of segments.
            "segment.ms": window_ms,
        },
    )


async def ensure_topic(settings: Settings, spec: TopicSpec) -> str | None:
    """Create the topic if it is missing (replicated on up to three brokers), or check the
    configuration of the one there; what is wrong, in one line, or None."""
    try:
        creation = await create_topics(
            settings, [spec], timeout=settings.kafka_connect_timeout, configs=True
        )
    except UNREACHABLE as exc:
        return f"cannot create or check topic {spec.name}: {reason(exc)}"
    if spec.name in creation.failed:
        return f"cannot create topic {spec.name}: error {creation.failed[spec.name].code}"
    if spec.name in creation.created:
        logger.info("created topic %s %s", spec.name, spec.config)
        return None
    return config_problem(spec, creation.configs.get(spec.name, {}))


def config_problem(spec: TopicSpec, actual: dict[str, str]) -> str | None:
    wrong = []
    policy = set((actual.get("cleanup.policy") or "").split(","))
    if not {"compact", "delete"} <= policy:
        wrong.append(f"cleanup.policy={actual.get('cleanup.policy')} (wanted compact,delete)")
    retention = actual.get("retention.ms")
    if retention is not None and 0 <= int(retention) < int(spec.config["retention.ms"]):
        wrong.append(f"retention.ms={retention} is shorter than BRIDGE_DEDUP_WINDOW")
    return f"topic {spec.name}: " + "; ".join(wrong) if wrong else None


class EventIdTopic:
    """Publishes this process's ids to the topic and follows it for everyone's (`SharedIds`)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.topic = event_ids_topic(settings).name
        self.metrics = metrics
        self.up = False  # ids are being shared (the last batch was acknowledged)
        self._said: bool | None = None  # what the log last said about it
        self.learned = 0
        self._producer: AIOKafkaProducer | None = None
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, learn: Learn) -> None:
        """Start following; wait (at most the connect timeout) until the window is read back.
        Never raises for the topic: without it this process remembers alone."""
        self._task = asyncio.create_task(self._follow_forever(learn), name="event-ids")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.kafka_connect_timeout):
                await self._caught_up.wait()
        logger.info(
            "%d event ids of the last %.0f s read back from %s%s",
            self.learned,
            self.settings.dedup_window,
            self.topic,
            "" if self.up else " (unavailable: this process remembers alone for now)",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # the follower died earlier: stopping must go on regardless
                logger.warning("the event-id follower had failed", exc_info=True)
            self._task = None

    # -- publishing ---------------------------------------------------------------------------

    async def share(self, events: list[tuple[bytes, float]]) -> bool:
        producer = self._producer
        if producer is None or (not self.up and time.monotonic() < self._retry_at):
            self.metrics.dedup_unshared.inc(len(events))
            return False
        try:
            async with asyncio.timeout(SHARE_BUDGET):
                await send_ids(producer, self.topic, events)
        except UNREACHABLE as exc:
            self.metrics.kafka_errors.labels("event_ids").inc()
            self.metrics.dedup_unshared.inc(len(events))
            self._retry_at = time.monotonic() + RETRY_EVERY
            self._unavailable(exc)
            return False
        self._available()
        return True

    def _available(self) -> None:
        if self._said is not True:
            logger.info("event ids shared through %s", self.topic)
            self._said = True
        self.up = True
        self.metrics.dedup_shared.set(1)

    def _unavailable(self, exc: BaseException) -> None:
        if self._said is not False:
            self._said = False
            logger.warning(
                "event ids not shared (%s): until %s takes them again, a retry that reaches "
                "another process may be stored twice",
                f"{type(exc).__name__}: {exc}".rstrip(": "),
                self.topic,
            )
        self.up = False
        self.metrics.dedup_shared.set(0)

    # -- following ----------------------------------------------------------------------------

    async def _follow_forever(self, learn: Learn) -> None:
        while True:
            try:
                await self._follow(learn)
            except (*UNREACHABLE, LookupError) as exc:
                self.metrics.kafka_errors.labels("event_ids").inc()
                self._unavailable(exc)
            finally:
                self._caught_up.set()  # a start never waits for a topic that is not there
            await asyncio.sleep(RETRY_EVERY)

    async def _follow(self, learn: Learn) -> None:
        producer, consumer = id_producer(self.settings), id_consumer(self.settings)
        try:
            async with asyncio.timeout(self.settings.kafka_connect_timeout):
                await producer.start()
                await consumer.start()
                partitions = await self._assign(producer, consumer)
            self._producer = producer
            self._available()
            await self._read(consumer, partitions, learn)
        finally:
            self._producer = None
            try:
                await stop_within(consumer)
            finally:  # even when this task is cancelled meanwhile
                await stop_within(producer)

    async def _assign(
        self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer
    ) -> list[TopicPartition]:
        """Every partition, each from the first record of the window."""
        await self._check_exists(consumer)
        # The producer asks for this topic's metadata (a consumer without a group knows only
        # the topics of its first metadata, which Apache Kafka gives none of).
        try:
            async with asyncio.timeout(METADATA_WAIT):
                numbers = await producer.partitions_for(self.topic)
        except (KafkaError, TimeoutError):
            numbers = None
        if not numbers:
            raise LookupError(f"no topic {self.topic}")
        partitions = [TopicPartition(self.topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        since = round((time.time() - self.settings.dedup_window) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
        # No further back than memory keeps: a partition's last `dedup_max_entries` records
        # (one per id, the topic being compacted) hold its newest ids, and older ones would be
        # forgotten as soon as learned. Without this, a start after a busy window (an hour at
        # 2,000/s: 3.6 million ids) read them all, its memory's peak and its wait growing
        # with the traffic instead of with the limit.
        ends = await consumer.end_offsets(partitions)
        newest = self.settings.dedup_max_entries
        for tp in partitions:
            start = found.get(tp)
            if start is None:  # nothing stored since: from the end
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, max(start.offset, ends[tp] - newest))
        return partitions

    async def _check_exists(self, consumer: AIOKafkaConsumer) -> None:
        # One metadata request; a client left waiting on a missing topic would ask (and log)
        # many times a second.
        if self.topic not in await consumer.topics():
            raise LookupError(f"no topic {self.topic}")

    async def _read(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], learn: Learn
    ) -> None:
        started = time.time()
        end = await consumer.end_offsets(partitions)
        waiting = set(partitions)  # until each is read up to where it ended at start
        checked = time.monotonic()
        while True:
            if not self.up:  # a batch was refused: start again from the topic's existence
                raise LookupError(f"{self.topic} does not take event ids")
            if time.monotonic() - checked > RETRY_EVERY:
                await self._check_exists(consumer)
                checked = time.monotonic()
            for tp in list(waiting):
                if await consumer.position(tp) >= end[tp]:
                    waiting.discard(tp)
            if not waiting:
                self._caught_up.set()
            batch = await consumer.getmany(timeout_ms=200, max_records=READ_BATCH)
            for records in batch.values():
                self._learn(records, learn, started)

    def _learn(
        self, records: list[ConsumerRecord[bytes, bytes]], learn: Learn, since: float
    ) -> None:
        now = time.time()
        lag, learned = self.metrics.dedup_lag, self.metrics.dedup_learned
        for key, stored in decode_ids(records):
            if learn(key, stored):
                self.learned += 1
                learned.inc()
                if stored >= since:  # live, not read back: how far behind the others it is
                    lag.observe(max(0.0, now - stored))


def id_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_options(settings),
        acks="all",
        # A duplicate id record is harmless (compaction keeps one): no producer ids needed.
        enable_idempotence=False,
        linger_ms=5,
        # An id batch not delivered by then is given up (it went to the spool's table after
        # SHARE_BUDGET): retrying it for the records' 30 s would only keep asking for a topic
        # that is gone.
        request_timeout_ms=ID_DELIVERY_MS,
    )


def id_consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a topic deleted and created again: read it all
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )


async def send_ids(
    producer: AIOKafkaProducer, topic: str, events: list[tuple[bytes, float]]
) -> None:
    """Publish (digest, stored at) pairs and wait for their acknowledgement.

    Written into record batches, one per partition (another when one is full), each
    acknowledged as a whole: `send()` per id cost ~100k instructions an id (aiokafka's
    pure-Python murmur2 of each key, its partition lists rebuilt, a future and a metadata
    tuple per id), a third of what a notification costs the bridge. The records are the same
    (key, value, timestamp), each in the partition aiokafka's partitioner would choose."""
    count = len(await producer.partitions_for(topic))
    batches: dict[int, BatchBuilder] = {}
    sent = []
    for key, stored in events:
        ms = round(stored * 1000)
        value = _MS.pack(ms)
        # murmur2 of the key modulo the partitions, as aiokafka's (and Java's) partitioner;
        # one partition (the topic bridge creates) needs no hash.
        partition = (murmur2(key) & 0x7FFFFFFF) % count if count > 1 else 0
        batch = batches.get(partition)
        if batch is None or batch.append(timestamp=ms, key=key, value=value) is None:
            if batch is not None:  # full (and closed by aiokafka): on its way
                sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            batch.append(timestamp=ms, key=key, value=value)
    for partition, batch in batches.items():
        batch.close()  # nothing else is added to it, even by a `send()`
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*sent)


def decode_ids(records: list[ConsumerRecord[bytes, bytes]]) -> Iterator[tuple[bytes, float]]:
    """(digest, stored at) of each record bridge wrote."""
    for record in records:
        if record.key is not None and record.value is not None and len(record.value) == _MS.size:
            yield record.key, _MS.unpack(record.value)[0] / 1000
