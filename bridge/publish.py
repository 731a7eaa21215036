"""Publish stage: the `Publisher` seam, with a Kafka implementation and an in-memory one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from bridge.errors import BrokerUnavailable, PublishError, PublishRefused
from bridge.kafka import kafka_options
from bridge.record import Record
from bridge.settings import Settings

logger = logging.getLogger(__name__)

# Kafka's key hash, remembered for the case ids seen lately (a case brings several).
_murmur2 = functools.lru_cache(maxsize=16_384)(murmur2)
CHECK_CACHE_SECONDS = 2.0  # readiness probes come often; ask the broker at most this often
# Refusals an idempotent producer never gets over: aiokafka keeps its producer id and sequence
# numbers, so every later record of the partition is refused alike (aio-libs/aiokafka#1017).
# Seen after a whole cluster was down for over request_timeout_ms: aiokafka expires the
# batches of a leaderless partition after giving them sequence numbers, leaving a gap the
# broker refuses with OutOfOrderSequenceNumber. A new producer gets a new producer id and
# starts again at sequence 0; the refused records are retried (spooled), not dropped.
_WEDGED = (OutOfOrderSequenceNumber, InvalidProducerEpoch, ProducerFenced)

# Why the broker refuses a write, as a bounded label; any other error it does not retry is
# "other". (UnknownTopicOrPartition is retried by aiokafka until the ack budget runs out: a
# deleted topic is found by `bridge.topics` instead.)
REFUSALS: dict[type[KafkaError], str] = {
    kafka_errors.TopicAuthorizationFailedError: "topic_authorization",
    kafka_errors.ClusterAuthorizationFailedError: "cluster_authorization",
    kafka_errors.TransactionalIdAuthorizationFailed: "cluster_authorization",
    kafka_errors.UnknownTopicOrPartitionError: "topic_missing",
    kafka_errors.InvalidTopicError: "topic_missing",
    kafka_errors.MessageSizeTooLargeError: "too_large",
    kafka_errors.RecordListTooLargeError: "too_large",
    kafka_errors.PolicyViolationError: "policy",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where Kafka stored a record."""

    topic: str
    partition: int
    offset: int


Queued = tuple[Record, "asyncio.Future[Delivery]"]  # a record and its request's answer
Members = list[tuple["asyncio.Future[Delivery]", int]]  # a batch's requests, offsets in it


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...

    async def publish(self, record: Record) -> Delivery:
        """Return once the record is acknowledged; raise PublishError otherwise."""
        ...

    async def check(self) -> str | None:
        """None when the broker answers, else why not."""
        ...


class KafkaPublisher:
    """aiokafka producer with `acks=all`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._checked: tuple[float, str | None] = (0.0, None)
        self._renewal: asyncio.Task[None] | None = None
        # Records waiting for their partition's next batch, and the task sending each.
        self._queued: dict[tuple[str, int], list[Queued]] = {}
        self._flushing: dict[tuple[str, int], asyncio.Task[None]] = {}

    def _new_producer(self) -> AIOKafkaProducer:
        s = self._settings
        return AIOKafkaProducer(
            **kafka_options(s),
            acks="all",
            enable_idempotence=s.kafka_enable_idempotence,
            linger_ms=s.kafka_linger_ms,
            max_batch_size=s.kafka_max_batch_size,
            max_request_size=s.kafka_max_request_size,
            request_timeout_ms=s.kafka_request_timeout_ms,
        )

    async def start(self) -> None:
        s = self._settings
        producer = self._new_producer()
        try:
            async with asyncio.timeout(s.kafka_connect_timeout):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await _bounded(producer.stop(), 2.0)
            raise BrokerUnavailable(
                f"cannot reach Kafka at {s.kafka_bootstrap_servers} "
                f"(BRIDGE_KAFKA_BOOTSTRAP_SERVERS) within {s.kafka_connect_timeout:g}s: "
                f"{type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc
        self._producer = producer

    async def stop(self, timeout: float) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if self._flushing:  # the records queued for batches go to aiokafka first
            await _bounded(asyncio.gather(*self._flushing.values()), timeout)
        if self._producer is not None:
            # aiokafka's stop() flushes and can wait forever on a dead broker: bound it.
            await _bounded(self._producer.stop(), timeout)
            self._producer = None

    async def publish(self, record: Record) -> Delivery:
        producer = self._producer
        if producer is None:
            raise PublishError("publisher not started")
        topic, key = record.topic, record.key
        partition = self._partition(topic, key)
        try:
            if partition is None:  # no key, or the topic's metadata not known yet
                meta = await producer.send_and_wait(
                    topic, record.value, key=key, headers=record.headers
                )
                return Delivery(meta.topic, meta.partition, meta.offset)
            return await self._batched(record, partition)
        except _WEDGED as exc:
            self._renew(producer, exc)
            raise PublishError(f"{type(exc).__name__}: {exc}; renewing the producer") from exc
        except KafkaError as exc:
            raise publish_error(exc) from exc

    def _batched(self, record: Record, partition: int) -> asyncio.Future[Delivery]:
        """Queue a record for its partition's next batch; the future is its own delivery.

        aiokafka's `send()` costs more per record than everything else bridge does around
        the write (a future, a metadata object and the accumulator's bookkeeping each): the
        records admitted in one turn of the event loop go to Kafka as one record batch per
        partition instead, written with `create_batch`/`send_batch`. No linger: a partition's
        first record starts a task that runs in the next turn and sends what the turn queued;
        records that come while the broker still has the partition's batch before them (one
        batch per partition in flight) join the next one, as in aiokafka's own accumulator."""
        waiter: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        where = (record.topic, partition)
        queue = self._queued.get(where)
        if queue is None:
            queue = self._queued[where] = []
        queue.append((record, waiter))
        if where not in self._flushing:
            self._flushing[where] = asyncio.create_task(self._flush(where))
        return waiter

    async def _flush(self, where: tuple[str, int]) -> None:
        """Send a partition's queued records, batch after batch, while records come; one task
        per partition at a time, so its batches (and a case's records) keep their order."""
        try:
            while queue := self._queued.pop(where, None):
                await self._send(where, queue)
        finally:
            del self._flushing[where]

    async def _send(self, where: tuple[str, int], queue: list[Queued]) -> None:
        producer = self._producer
        rest = iter(queue)
        members: Members = []  # in the batch being filled
        try:
            if producer is None:
                raise kafka_errors.ProducerClosed  # noqa: TRY301 - answered below, as the rest
            batch = producer.create_batch()
            for record, waiter in rest:
                if waiter.done():  # its request gave up (ack budget) before it was sent
                    continue
                added = batch.append(
                    timestamp=None, key=record.key, value=record.value, headers=record.headers
                )
                if added is None:  # full (and closed by aiokafka): on its way, then a new one
                    await _submit(producer, batch, where, members)
                    batch, members = producer.create_batch(), []
                    added = batch.append(
                        timestamp=None, key=record.key, value=record.value, headers=record.headers
                    )
                members.append((waiter, added.offset))
            if members:
                batch.close()  # nothing else is added to it, even by a `send()`
                await _submit(producer, batch, where, members)
        except asyncio.CancelledError:
            _fail([*members, *((w, 0) for _, w in rest)], kafka_errors.ProducerClosed())
            raise
        except Exception as exc:  # noqa: BLE001 - each request raises it, as `send()` would
            _fail([*members, *((w, 0) for _, w in rest)], exc)

    def _renew(self, wedged: AIOKafkaProducer, reason: KafkaError) -> None:
        """Replace `wedged` by a new producer, once, in the background."""
        if self._producer is wedged and (self._renewal is None or self._renewal.done()):
            self._renewal = asyncio.create_task(self._replace(wedged, reason))

    async def _replace(self, wedged: AIOKafkaProducer, reason: KafkaError) -> None:
        fresh = self._new_producer()
        try:
            async with asyncio.timeout(self._settings.kafka_connect_timeout):
                await fresh.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("Kafka producer not renewed (%s): trying at the next refusal", exc)
            await _bounded(fresh.stop(), 2.0)
            return
        self._producer = fresh
        logger.warning("Kafka producer renewed: the old one was refused (%r)", reason)
        # Its queued records are refused alike and fail fast; they are in the spool already.
        await _bounded(wedged.stop(), 5.0)

    def _partition(self, topic: str, key: bytes | None) -> int | None:
        """The partition of a key, as aiokafka's default partitioner (and Kafka's Java client)
        chooses it: murmur2 of the key modulo the topic's partition count. Chosen here, the
        producer skips building the lists of partitions it passes its partitioner on every
        send (a measured share of each request); None leaves it to aiokafka (no key, or the
        topic's metadata not known yet)."""
        if key is None or self._producer is None:
            return None
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        hashed: int = _murmur2(key)
        return (hashed & 0x7FFFFFFF) % len(partitions)

    async def check(self) -> str | None:
        if self._producer is None:
            return "not started"
        checked_at, problem = self._checked
        now = time.monotonic()
        if now - checked_at < CHECK_CACHE_SECONDS:
            return problem
        try:
            async with asyncio.timeout(2.0):
                await self._producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError) as exc:
            problem = f"unreachable ({type(exc).__name__}: {exc})".replace(": )", ")")
        else:
            problem = None
        self._checked = (time.monotonic(), problem)
        return problem


async def _submit(
    producer: AIOKafkaProducer, batch: BatchBuilder, where: tuple[str, int], members: Members
) -> None:
    """Hand a batch to aiokafka (which waits while the partition's previous batch is still
    queued there); each member's request is answered once the broker acknowledged it."""
    topic, partition = where
    acked = await producer.send_batch(batch, topic, partition=partition)
    acked.add_done_callback(functools.partial(_acknowledged, where, members))


def _acknowledged(
    where: tuple[str, int],
    members: Members,
    acked: asyncio.Future[RecordMetadata],
) -> None:
    """A batch's outcome, told to each of its records' requests."""
    if acked.cancelled():
        _fail(members, kafka_errors.ProducerClosed())
        return
    exc = acked.exception()
    if exc is not None:
        _fail(members, exc)
        return
    topic, partition = where
    base = acked.result().offset
    for waiter, offset in members:
        if not waiter.done():
            waiter.set_result(Delivery(topic, partition, base + offset))


def _fail(members: Members, exc: BaseException) -> None:
    for waiter, _ in members:
        if not waiter.done():
            waiter.set_exception(exc)


def publish_error(exc: KafkaError) -> PublishError:
    """A failed send as bridge's error: a refusal (503, not spooled) when the broker will
    refuse it again until someone changes the cluster, else a failure to spool."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    reason = REFUSALS.get(type(exc))
    if reason is not None:
        return PublishRefused(text, reason)
    # Down or slow, or the producer being replaced under this send (ProducerClosed, marked
    # not retriable by aiokafka): spool it.
    if exc.retriable or isinstance(exc, (KafkaTimeoutError, kafka_errors.ProducerClosed)):
        return PublishError(text)
    return PublishRefused(text, "other")


class MemoryPublisher:
    """Keeps records in memory, one partition per topic (a record's offset is its index in
    the topic's list). For tests and dry runs."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Record]] = defaultdict(list)
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self, timeout: float) -> None:  # noqa: ARG002 - nothing to flush
        self.started = False

    async def publish(self, record: Record) -> Delivery:
        if not self.started:
            raise PublishError("publisher not started")
        log = self.topics[record.topic]
        log.append(record)
        return Delivery(record.topic, 0, len(log) - 1)

    async def check(self) -> str | None:
        return None if self.started else "not started"


async def _bounded(awaitable: object, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await awaitable  # type: ignore[misc]
    except TimeoutError:
        logger.warning("gave up waiting after %.1fs", timeout)
    except Exception:
        logger.warning("error while closing", exc_info=True)
