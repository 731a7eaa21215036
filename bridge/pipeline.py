"""The whole path for one notification, and what keeps it from being lost.

    prepare (pure): parse -> map -> encode -> route; or a dead letter
    drop a duplicate (event id seen and stored within the window)
    store: Kafka within the ack budget, else the spool; 503 only when neither can take it
    drain (background): spool -> Kafka, oldest first

A write the broker refuses (no ACL, the topic deleted) is answered 503 and never spooled: a
200 would claim it stored while the spool drained into the same refusal. Spooled entries it
refuses stay in the spool, behind nothing, until the broker takes them.

Order per case: a notification whose key has entries waiting in the spool, or that arrives
while Kafka is known to be down, goes into the spool behind them instead of to Kafka. The
spool drains oldest first, and a key's next entry is sent only after its previous one was
acknowledged, so a case's records reach the partition in the order they were answered 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from bridge.budget import Budget
from bridge.codec.encode import Codec
from bridge.codec.mapping import Mapper
from bridge.codec.registry import SchemaRegistry
from bridge.codec.schemas import Schema
from bridge.codec.writer import Unsupported, Writer
from bridge.errors import (
    InvalidNotification,
    Overloaded,
    PayloadTooLarge,
    PublishError,
    PublishRefused,
    PublishTimeout,
    SpoolError,
)
from bridge.kafka.publish import Delivery, Publisher
from bridge.kafka.topics import TopicWatch, refusal
from bridge.notifications.parse import case_id_of, parse_notification
from bridge.notifications.record import Record
from bridge.notifications.routing import (
    DLQ,
    dead_letter_headers,
    dead_letter_id,
    headers_for,
    topic_for,
)
from bridge.settings import Settings
from bridge.state.dedup import Deduplicator
from bridge.state.spool import Spool, SpoolEntry
from bridge.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

DRAIN_BATCH = 500
RECORD_OVERHEAD = 1024  # record batch and record headers, generously


@dataclass(frozen=True, slots=True)
class Prepared:
    """A notification ready for Kafka: its record, and what the log line and metrics say."""

    type: str  # call, waba_template, chatbot, or dlq
    case_id: str | None
    event_id: str
    record: Record
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one notification."""

    outcome: str  # "stored" (Kafka acknowledged), "spooled", or "duplicate"
    prepared: Prepared
    delivery: Delivery | None = None


class Pipeline:
    """Every collaborator is given, none built here: by `bridge.container` (which starts and
    stops them), or by `container.build_pipeline` for a pipeline of its own (`bridge replay
    --kafka`, tests, the bench)."""

    def __init__(  # noqa: PLR0913 - each collaborator by name
        self,
        settings: Settings,
        publisher: Publisher,
        *,
        schemas: dict[str, Schema],
        codec: Codec,
        spool: Spool | None,
        dedup: Deduplicator,
        registry: SchemaRegistry | None,
        metrics: Metrics,
        topics: TopicWatch,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.schemas = schemas
        # Each type's event-id rule, as its schema declares it.
        self.rules = {kind: schema.event_id for kind, schema in self.schemas.items()}
        self.mappers = {kind: Mapper(schema) for kind, schema in self.schemas.items()}
        # The one-pass writer where the schema's shape allows it (always, for ours).
        self.writers = {kind: _writer(schema) for kind, schema in self.schemas.items()}
        self.codec = codec
        self.registry = registry  # only asked for readiness: the codec has the ids
        self.spool = spool
        self.dedup = dedup
        self.metrics = metrics
        self.topics = topics
        self.kafka_up = True  # false from a failed publish until the next acknowledgement
        self.in_flight = 0
        self.ack_budget = Budget(settings.ack_timeout)

    @property
    def unavailable_topics(self) -> int:
        """Topics missing or refusing writes (for the metrics)."""
        return self.topics.unavailable

    @property
    def remembered(self) -> int:
        """Event ids remembered for duplicates (for the metrics)."""
        return len(self.dedup)

    # -- admission ----------------------------------------------------------------------------

    def admit(self) -> None:
        """Bound the notifications in flight (and so memory); beyond it, 503 at once. Each
        admitted one is `release`d when done. (Two calls, not a generator context manager:
        that cost ~10k instructions a request.)"""
        if self.in_flight >= self.settings.max_in_flight:
            raise Overloaded(f"more than {self.settings.max_in_flight} notifications in flight")
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    # -- one notification ---------------------------------------------------------------------

    def prepare(self, body: bytes, content_type: str, received_at: float) -> Prepared:
        """Parse, map, encode and route; what cannot be typed becomes a dead letter."""
        try:
            notification = parse_notification(body, self.rules)
            writer = self.writers[notification.type]
            if writer is not None:
                value = self.codec.frame(notification.type, writer.write(notification.data))
            else:
                avro = self.mappers[notification.type].to_record(notification.data)
                value = self.codec.encode(notification.type, avro)
        except InvalidNotification as exc:
            return self._dead_letter(body, exc, content_type, received_at)
        except (ValueError, TypeError, OverflowError) as exc:  # fastavro refused the record
            invalid = InvalidNotification("encode-failed", f"{type(exc).__name__}: {exc}")
            return self._dead_letter(body, invalid, content_type, received_at)
        record = Record(
            topic_for(self.settings.topic_prefix, notification.type),
            notification.case_id.encode(),
            value,
            headers_for(notification, self.schemas[notification.type], received_at),
        )
        prepared = Prepared(notification.type, notification.case_id, notification.event_id, record)
        if self._fits(record):
            return prepared
        too_large = InvalidNotification("too-large", f"record of {len(value)} bytes")
        return self._dead_letter(body, too_large, content_type, received_at)

    def _fits(self, record: Record) -> bool:
        return record.size + RECORD_OVERHEAD <= self.settings.kafka_max_request_size

    def _dead_letter(
        self, body: bytes, exc: InvalidNotification, content_type: str, received_at: float
    ) -> Prepared:
        headers = dead_letter_headers(exc.reason, exc.detail, content_type, body, received_at)
        case_id = _best_effort_case_id(body)
        record = Record(
            topic_for(self.settings.topic_prefix, DLQ),
            case_id.encode() if case_id else None,
            body,
            headers,
        )
        prepared = Prepared(DLQ, case_id, dead_letter_id(body), record, exc.reason)
        if not self._fits(record):
            raise PayloadTooLarge(
                f"a body of {len(body)} bytes does not fit in a Kafka record "
                f"(BRIDGE_KAFKA_MAX_REQUEST_SIZE={self.settings.kafka_max_request_size})"
            )
        return prepared

    async def accept(
        self, body: bytes, content_type: str = "", received_at: float | None = None
    ) -> Outcome:
        """Store one notification. Returns once it is acknowledged by Kafka or in the spool;
        raises PublishError or SpoolError (both 503) when it could be stored nowhere."""
        prepared = self.prepare(body, content_type, received_at or time.time())
        if self.dedup.seen(prepared.event_id):
            return Outcome("duplicate", prepared)
        outcome = await self._store(prepared)
        self.dedup.remember(prepared.event_id)
        return outcome

    async def _store(self, prepared: Prepared) -> Outcome:
        spool, record, topics = self.spool, prepared.record, self.topics
        if topics.refused or topics.missing(record.topic):
            self._refused_before(record)
        if spool is not None and (not self.kafka_up or record.key in spool.keys):
            await spool.append(record)  # behind what waits, never overtaking it
            return Outcome("spooled", prepared)
        try:
            delivery = await self._publish(record)
        except PublishRefused as exc:
            self.metrics.kafka_errors.labels("publish").inc()
            raise self._refusal(record.topic, exc) from None
        except PublishError as exc:
            self.metrics.kafka_errors.labels("publish").inc()
            problem = await topics.problem(record.topic)  # a deleted topic looks like a timeout
            if problem is not None:
                raise self._refusal(record.topic, refusal(record.topic, problem)) from exc
            self.kafka_up = False
            if spool is None:
                raise
            logger.warning("Kafka did not acknowledge (%s): spooling", exc)
            await spool.append(record)
            return Outcome("spooled", prepared)
        self.kafka_up = True
        if topics.refused:
            topics.accept(record.topic)
        return Outcome("stored", prepared, delivery)

    def _refused_before(self, record: Record) -> None:
        """Raise the refusal at once for a topic found missing moments ago (publishing would
        wait out the ack budget), or, refused lately, when the record would go to the spool."""
        missing = self.topics.missing(record.topic)
        if missing is not None:
            raise self._refusal(record.topic, refusal(record.topic, missing))
        known = self.topics.refused.get(record.topic)
        spooling = self.spool is not None and (not self.kafka_up or record.key in self.spool.keys)
        if known is not None and spooling:
            raise self._refusal(record.topic, PublishRefused(known.detail, known.reason))

    def _refusal(self, topic: str, error: PublishRefused) -> PublishRefused:
        """Count a refusal and remember it for `/readyz`; the error to raise."""
        if topic not in self.topics.refused:
            logger.error("Kafka refuses writes to %s: %s", topic, error)
        self.topics.refuse(topic, error)
        self.metrics.kafka_refused.labels(error.reason).inc()
        return error

    async def _publish(self, record: Record) -> Delivery:
        try:
            return await self.ack_budget.wait(self.publisher.publish(record))
        except TimeoutError:
            raise PublishTimeout(
                f"no acknowledgement from Kafka within {self.settings.ack_timeout:g}s"
            ) from None

    # -- the spool, drained -------------------------------------------------------------------

    async def drain_forever(self) -> None:
        """Send spooled entries to Kafka, oldest first, backing off while Kafka is down."""
        spool = self.spool
        if spool is None:
            return
        backoff = 0.5
        while True:
            self.metrics.refresh(self)  # for the other workers' scrapes
            if spool.depth == 0:
                spool.appended.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await spool.appended.wait()
                # Idle, its files are still watched (deleted ones rebuilt, said once) and
                # what a full disk kept from being deleted is deleted once it can be.
                await spool.check()
                continue
            try:
                await self.drain_once()
            except (PublishError, SpoolError) as exc:
                self.metrics.kafka_errors.labels("drain").inc()
                logger.warning("spool drain paused %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.5

    async def drain_once(self) -> int:
        """Send one batch of the oldest entries; return how many were acknowledged."""
        assert self.spool is not None  # noqa: S101 - only called with a spool
        entries = await self.spool.head(DRAIN_BATCH)
        sent = 0
        for everyone in _waves(entries):
            # Not sent to a topic found missing moments ago: it would wait out the ack budget.
            wave = [e for e in everyone if self.topics.missing(e.record.topic) is None]
            results = await asyncio.gather(
                *(self._publish(entry.record) for entry in wave),
                return_exceptions=True,
            )
            done = [e for e, r in zip(wave, results, strict=True) if isinstance(r, Delivery)]
            await self.spool.remove(done)
            sent += len(done)
            for entry in done:
                if self.topics.refused:
                    self.topics.accept(entry.record.topic)
            failed = await self._drain_failures(wave, results)
            if failed:
                self.kafka_up = False
                if isinstance(failed[0], PublishError):
                    raise failed[0]
                raise PublishError(repr(failed[0])) from failed[0]
        if sent:
            self.kafka_up = True
        elif entries:  # all refused: they stay, and the drain backs off
            raise PublishRefused("every entry at the head of the spool is refused", "spooled")
        return sent

    async def _drain_failures(
        self, wave: list[SpoolEntry], results: list[Delivery | BaseException]
    ) -> list[BaseException]:
        """The failures that mean Kafka is down. The refused entries (by the broker, or for a
        topic it no longer has) stay in the spool and do not hold up the others."""
        failed = []
        for entry, result in zip(wave, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            topic = entry.record.topic
            if isinstance(result, PublishRefused):
                self._refusal(topic, result)
            elif isinstance(result, PublishError) and (problem := await self.topics.problem(topic)):
                self._refusal(topic, refusal(topic, problem))
            else:
                failed.append(result)
        return failed

    # -- health -------------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when a notification can be stored and a Kafka stall would not lose it: the
        spool can take a write (Kafka itself may be away: the spool takes over), or, without
        a spool, Kafka is reachable. A replica whose spool cannot write would answer 503 at
        Kafka's first stall, so it leaves the rotation to the replicas that can."""
        kafka_problem = await self.publisher.check()
        checks = {"kafka": kafka_problem or "ok", "topics": await self.topics.check() or "ok"}
        if self.registry is not None:
            # Ids are cached: a registry outage does not stop storing; it is reported.
            checks["schema_registry"] = await self.registry.check() or "ok"
        if self.spool is None:
            checks["spool"] = "disabled"
            return kafka_problem is None, checks
        spool_problem = await self.spool.check()
        checks["spool"] = spool_problem or "ok"
        return spool_problem is None, checks


def _writer(schema: Schema) -> Writer | None:
    try:
        return Writer(schema)
    except Unsupported:
        logger.warning("schema %s: mapping and encoding in two passes", schema.fullname)
        return None


def _waves(entries: list[SpoolEntry]) -> Iterator[list[SpoolEntry]]:
    """Split entries (oldest first) into waves that hold each key at most once, so a key's
    next entry is sent only after the one before it was acknowledged."""
    pending = entries
    while pending:
        wave: list[SpoolEntry] = []
        rest: list[SpoolEntry] = []
        seen: set[bytes | None] = set()
        for entry in pending:
            key = entry.record.key
            (rest if key in seen else wave).append(entry)
            seen.add(key)
        yield wave
        pending = rest


def _best_effort_case_id(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
        return case_id_of(data) if isinstance(data, dict) else None
    except (orjson.JSONDecodeError, InvalidNotification):
        return None
