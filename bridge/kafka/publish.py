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
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from aiokafka.partitioner import murmur2

from bridge.errors import PublishError
from bridge.kafka.client import kafka_options, stop_within
from bridge.kafka.errors import UNREACHABLE, publish_error, unavailable
from bridge.notifications.record import Record
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where Kafka stored a record."""

    topic: str
    partition: int
    offset: int


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
        except BaseException as exc:  # a refusal or a cancelled start alike: stopped
            await stop_within(producer)
            if isinstance(exc, UNREACHABLE):
                raise unavailable(
                    f"cannot reach Kafka at {s.kafka_bootstrap_servers} "
                    f"(BRIDGE_KAFKA_BOOTSTRAP_SERVERS) within {s.kafka_connect_timeout:g}s",
                    exc,
                ) from exc
            raise
        self._producer = producer

    async def stop(self, timeout: float) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        producer, self._producer = self._producer, None  # none of it used again, even if cut short
        if producer is not None:
            # aiokafka's stop() flushes and can wait forever on a dead broker: bound it.
            await stop_within(producer, timeout)

    async def publish(self, record: Record) -> Delivery:
        producer = self._producer
        if producer is None:
            raise PublishError("publisher not started")
        topic, key = record.topic, record.key
        try:
            meta = await producer.send_and_wait(
                topic,
                record.value,
                key=key,
                partition=self._partition(topic, key),
                headers=record.headers,
            )
        except _WEDGED as exc:
            self._renew(producer, exc)
            raise PublishError(f"{type(exc).__name__}: {exc}; renewing the producer") from exc
        except KafkaError as exc:
            raise publish_error(exc) from exc
        return Delivery(meta.topic, meta.partition, meta.offset)

    def _renew(self, wedged: AIOKafkaProducer, reason: KafkaError) -> None:
        """Replace `wedged` by a new producer, once, in the background."""
        if self._producer is wedged and (self._renewal is None or self._renewal.done()):
            self._renewal = asyncio.create_task(self._replace(wedged, reason))

    async def _replace(self, wedged: AIOKafkaProducer, reason: KafkaError) -> None:
        fresh = self._new_producer()
        try:
            async with asyncio.timeout(self._settings.kafka_connect_timeout):
                await fresh.start()
        except BaseException as exc:
            await stop_within(fresh)
            if not isinstance(exc, UNREACHABLE):
                raise
            logger.warning("Kafka producer not renewed (%s): trying at the next refusal", exc)
            return
        self._producer = fresh
        logger.warning("Kafka producer renewed: the old one was refused (%r)", reason)
        # Its queued records are refused alike and fail fast; they are in the spool already.
        await stop_within(wedged, 5.0)

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
        except UNREACHABLE as exc:
            problem = f"unreachable ({type(exc).__name__}: {exc})".replace(": )", ")")
        else:
            problem = None
        self._checked = (time.monotonic(), problem)
        return problem


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
