"""`bridge redrive`: dead letters back through today's pipeline, once their cause is fixed.

Each selected dead letter's raw body goes through the live pipeline's own `prepare` (parse ->
map -> encode -> route, the event-id rule its schema declares) with its original
`received-at`; what now types is published to its topic (acks=all, the idempotent producer
where the settings have it) with one more header, `redriven-from: <dlq>/<partition>@<offset>`.
What still fails is counted by its reason and left where it is: nothing is written to the DLQ.

Three steps, none holding the DLQ in memory:

    plan   read the DLQ up to the end offsets it had at the start; count what each selected
           dead letter would become (all `--dry-run` does), and find the topics and the
           earliest received-at of those that now type
    scan   read the event ids of those topics since that time (less a margin for clocks): an
           event stored before, by a former run or by the vendor's retry, has a record there
           written after its dead letter was received
    store  read the DLQ again, the same range; skip an event id the scan found, the shared
           duplicate memory (`<prefix>event-ids`, followed during the run) knows, or this
           run stored; publish the others in waves, each wave acknowledged before the next

Exactly once: every stored id is remembered and shared as the live service does, so a vendor
retry reaching the service during the run is dropped, and one the service stored first is
skipped here. Resumable by running it again: what was stored is found and skipped (`--since`
leaves out what is done). Ctrl-C stops reading; the wave in flight is acknowledged (or fails)
before the summary, so no record is left half-published; a second Ctrl-C stops at once (what
was sent may then be stored without this run knowing: the next run finds it in the scan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Final

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from bridge.codec.encode import Codec
from bridge.codec.registry import SchemaRegistry, resolve_ids
from bridge.codec.schemas import load_schemas
from bridge.errors import (
    BridgeError,
    BrokerUnavailable,
    PublishError,
    PublishTimeout,
    TopicUnavailable,
)
from bridge.kafka.client import Reading, reading
from bridge.kafka.diagnosis import check_connection
from bridge.kafka.event_ids import EventIdTopic
from bridge.kafka.publish import Delivery, KafkaPublisher, Publisher
from bridge.kafka.topics import TopicWatch
from bridge.notifications.record import Record
from bridge.notifications.routing import DLQ, redriven_headers, topic_for
from bridge.pipeline import Pipeline, Prepared
from bridge.settings import Settings
from bridge.state.dedup import Deduplicator, digest
from bridge.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

WAVE: Final = 256  # records in flight at once, acknowledged before the next wave
IDLE: Final = 2.0  # seconds without a record: a partition's end, where end offsets lie
CLOCK_MARGIN: Final = 300.0  # seconds the scan starts before the earliest dead letter
ACK_BUDGET: Final = 30.0  # seconds a wave may wait for its acknowledgements
PROGRESS_EVERY: Final = 1.0


@dataclass(frozen=True)
class Filters:
    """Which dead letters to re-drive; empty means all."""

    reasons: frozenset[str] = frozenset()
    since: float | None = None  # received-at, epoch seconds
    until: float | None = None
    case_id: str | None = None
    types: frozenset[str] = frozenset()  # the body's `type` member

    def select(self, letter: DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (self.since is None or letter.received_at >= self.since)
            and (self.until is None or letter.received_at < self.until)
            and (self.case_id is None or letter.key == self.case_id.encode())
            and (not self.types or letter.type in self.types)
        )


@dataclass(frozen=True)
class DeadLetter:
    """One record of the DLQ, as the pipeline wrote it."""

    partition: int
    offset: int
    key: bytes | None
    body: bytes
    reason: str
    received_at: float
    content_type: str
    type: str | None  # the body's `type` member, when it has one

    @classmethod
    def of(cls, message: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        headers = {k: v.decode("utf-8", "replace") for k, v in message.headers}
        body = message.value or b""
        return cls(
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            body=body,
            reason=headers.get("dlq-reason", "?"),
            received_at=_received_at(headers.get("received-at"), message.timestamp),
            content_type=headers.get("content-type", ""),
            type=_type_of(body),
        )


def moment(text: str) -> float:
    """A `--since`/`--until` value: an ISO 8601 date or date and time (`2026-12-01`,
    `2026-12-01T08:30`, `2026-12-01T08:30:00.250Z`, `...+07:00`), UTC unless it says."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _received_at(header: str | None, timestamp_ms: int) -> float:
    if header:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(header).timestamp()
    return timestamp_ms / 1000  # a record without the header: when Kafka got it


def _type_of(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass
class Summary:
    """What the run did (or, dry, would do), by the dead letters' reasons."""

    dry_run: bool = False
    in_dlq: int = 0  # records in the range read
    read: int = 0
    selected: int = 0
    stored: Counter[str] = field(default_factory=Counter)  # by type
    already: Counter[str] = field(default_factory=Counter)  # by type
    failing: Counter[str] = field(default_factory=Counter)  # by today's reason
    by_reason: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> outcome
    interrupted: bool = False

    def count(self, letter: DeadLetter, outcome: str) -> None:
        self.by_reason.setdefault(letter.reason, Counter())[outcome] += 1

    def line(self) -> str:
        verb = "would store" if self.dry_run else "stored"
        parts = [
            f"{self.selected} of {self.read} dead letters selected",
            f"{verb} {_counted(self.stored)}",
            f"already stored {_counted(self.already)}",
            f"still failing {_counted(self.failing)}",
        ]
        if self.interrupted:
            parts.append("interrupted: run again to go on")
        return "; ".join(parts)

    def report(self) -> list[str]:
        """One line per dead-letter reason: what its letters became."""
        return [
            f"  {reason}: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
            for reason, outcomes in sorted(self.by_reason.items())
        ]


def _counted(counter: Counter[str]) -> str:
    total = counter.total()
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{k} {n}' for k, n in sorted(counter.items()))})"


@dataclass
class _Plan:
    began: int  # ms: dead letters written after it are left for another run
    starts: dict[TopicPartition, int]  # the DLQ's range when the run began
    ends: dict[TopicPartition, int]
    targets: set[str] = field(default_factory=set)
    earliest: float | None = None


class Redrive:
    """One run. The publisher is a seam (tests give one whose Kafka goes away)."""

    def __init__(
        self,
        settings: Settings,
        filters: Filters,
        *,
        dry_run: bool = False,
        publisher: Publisher | None = None,
        progress: IO[str] | None = None,
    ) -> None:
        # No spool: a record Kafka does not take stops the run, which can be run again.
        self.settings = settings.model_copy(update={"spool_dir": None})
        self.filters = filters
        self.dry_run = dry_run
        self.dlq = topic_for(settings.topic_prefix, DLQ)
        self.summary = Summary(dry_run=dry_run)
        self.progress = progress
        self.metrics = Metrics()
        self.schemas = load_schemas(settings.schema_dir)
        self.event_ids = (
            EventIdTopic(self.settings, self.metrics)
            if settings.dedup_shared and settings.dedup_window > 0 and not dry_run
            else None
        )
        self.dedup = Deduplicator(
            settings.dedup_window, settings.dedup_max_entries, None, self.event_ids
        )
        self.publisher = publisher or KafkaPublisher(self.settings)
        self.registry = SchemaRegistry(settings) if settings.schema_registry_url else None
        self.codec = Codec(self.schemas)
        self.pipeline = Pipeline(
            self.settings,
            self.publisher,
            schemas=self.schemas,
            codec=self.codec,
            spool=None,
            dedup=self.dedup,
            registry=self.registry,
            metrics=self.metrics,
            topics=TopicWatch(self.settings, kafka=False),  # refusals only: no Kafka of its own
        )
        self.stored_ids: set[bytes] = set()  # digests: found by the scan, or stored now
        self.stopping = False
        self._started = time.monotonic()
        self._shown = 0.0

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> Summary:
        await check_connection(self.settings)  # a refusal in one line naming its setting
        try:
            if self.registry is not None:
                ids = await resolve_ids(self.registry, self.settings, self.schemas)
                self.codec.use_ids(ids)
            plan = await self._plan()
            if plan.targets and not self.dry_run:
                await self.publisher.start()
                if self.event_ids is not None:  # learns what the live service stores meanwhile
                    await self.event_ids.start(self.dedup.learn)
            await self._scan(plan)  # a dry run says what is stored already too
            await self._store(plan)
        finally:
            await self._close()
        self._log_run()
        return self.summary

    def _log_run(self, error: str = "") -> None:
        """The run's one line: what it stored, skipped and left."""
        s = self.summary
        logger.log(
            logging.WARNING if error else logging.INFO,
            "redrive%s: %s%s",
            " (dry run)" if self.dry_run else "",
            s.line(),
            f"; stopped: {error}" if error else "",
            extra={
                "dry_run": self.dry_run,
                "selected": s.selected,
                "stored": s.stored.total(),
                "skipped": s.already.total(),
                "left": s.failing.total(),
                "interrupted": s.interrupted,
            },
        )

    def _log_letter(
        self,
        letter: DeadLetter,
        outcome: str,
        prepared: Prepared,
        delivery: Delivery | None = None,
    ) -> None:
        """One line per dead letter, at debug."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "redrive %s/%d@%d: %s",
            self.dlq,
            letter.partition,
            letter.offset,
            outcome,
            extra={
                "outcome": outcome,
                "type": prepared.type,
                "event_id": prepared.event_id,
                "reason": prepared.reason or letter.reason,
                "case_id": prepared.case_id,
                "topic": delivery.topic if delivery else None,
                "partition": delivery.partition if delivery else None,
                "offset": delivery.offset if delivery else None,
            },
        )

    async def _close(self) -> None:
        with contextlib.suppress(BridgeError):
            await self.dedup.flush()  # shared with the live service before leaving
        if self.event_ids is not None:
            await self.event_ids.stop()
        await self.publisher.stop(timeout=5.0)
        if self.registry is not None:
            await self.registry.close()

    # -- reading the DLQ ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading_dlq(self) -> AsyncIterator[Reading]:
        try:
            async with reading(
                self.settings, [self.dlq], client_id=f"{self.settings.kafka_client_id}-redrive"
            ) as read:
                if read.missing:
                    raise TopicUnavailable(
                        f"topic {self.dlq} does not exist, or this principal may not describe "
                        "it (BRIDGE_TOPIC_PREFIX, BRIDGE_KAFKA_BOOTSTRAP_SERVERS?)"
                    )
                yield read
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read {self.dlq}: {_describe(exc)}") from exc

    async def _letters(self, read: Reading, plan: _Plan) -> AsyncIterator[DeadLetter]:
        """The dead letters the DLQ held when the run began, in order per partition: up to its
        end offsets then, and past them while the records are older than the run (a broker may
        report an end offset short after a multi-record batch: Tansu), until none comes."""
        ends = plan.ends
        left = {tp for tp, end in ends.items() if end > plan.starts.get(tp, 0)}
        reached: set[TopicPartition] = set()
        last = time.monotonic()
        while left and not self.stopping and time.monotonic() - last < IDLE:
            try:
                batch = await read.consumer.getmany(*left, timeout_ms=200)
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot read {self.dlq}: {_describe(exc)}") from exc
            if not batch and left <= reached:
                return  # at every end, and nothing older than the run beyond them
            if batch:
                last = time.monotonic()
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset >= ends[tp] and message.timestamp > plan.began:
                        left.discard(tp)  # written since the run began
                        break
                    yield DeadLetter.of(message)
                if messages and messages[-1].offset >= ends[tp] - 1:
                    reached.add(tp)

    def _prepare(self, letter: DeadLetter) -> Prepared:
        return self.pipeline.prepare(letter.body, letter.content_type, letter.received_at)

    async def _plan(self) -> _Plan:
        began = round(time.time() * 1000)
        async with self._reading_dlq() as read:
            ends = await read.consumer.end_offsets(read.partitions)
            starts = await read.consumer.beginning_offsets(read.partitions)
            plan = _Plan(began, starts, ends)
            self.summary.in_dlq = sum(ends[tp] - starts[tp] for tp in read.partitions)
            async for letter in self._letters(read, plan):
                if not self.filters.select(letter):
                    continue
                prepared = self._prepare(letter)
                if prepared.type != DLQ:
                    plan.targets.add(prepared.record.topic)
                    if plan.earliest is None or letter.received_at < plan.earliest:
                        plan.earliest = letter.received_at
        return plan

    # -- what is stored already ---------------------------------------------------------------

    async def _scan(self, plan: _Plan) -> None:
        """The event ids of the target topics since the earliest dead letter that now types."""
        if not plan.targets or plan.earliest is None:
            return
        since = round((plan.earliest - CLOCK_MARGIN) * 1000)
        client_id = f"{self.settings.kafka_client_id}-redrive"
        try:
            async with reading(self.settings, sorted(plan.targets), client_id=client_id) as read:
                if read.missing and not self.dry_run:
                    raise TopicUnavailable(
                        f"topic {', '.join(read.missing)} does not exist: create it as the "
                        "others (README, Topics) before re-driving into it"
                    )
                await _seek_to_time(read, since)
                async for message in read.records(IDLE):
                    for key, value in message.headers:
                        if key == "event-id":
                            self.stored_ids.add(digest(value.decode()))
        except KafkaError as exc:
            topics = ", ".join(sorted(plan.targets))
            raise BrokerUnavailable(f"cannot read {topics}: {_describe(exc)}") from exc

    def _known(self, event_id: str) -> bool:
        return digest(event_id) in self.stored_ids or self.dedup.seen(event_id)

    # -- storing ------------------------------------------------------------------------------

    async def _store(self, plan: _Plan) -> None:
        wave: list[tuple[DeadLetter, Prepared]] = []
        with _interruptible(self):
            async with self._reading_dlq() as read:
                async for letter in self._letters(read, plan):
                    if self.stopping:
                        break
                    self.summary.read += 1
                    outcome = self._outcome(letter, wave)
                    if outcome is not None:
                        wave.append(outcome)
                    if len(wave) >= WAVE:
                        await self._send(wave)
                        wave = []
                    self._show_progress()
                if wave:
                    await self._send(wave)
            self.summary.interrupted = self.stopping
        self._show_progress(final=True)

    def _outcome(
        self, letter: DeadLetter, wave: list[tuple[DeadLetter, Prepared]]
    ) -> tuple[DeadLetter, Prepared] | None:
        """Count a dead letter that is skipped or still fails; the one to publish, else None."""
        if not self.filters.select(letter):
            return None
        self.summary.selected += 1
        prepared = self._prepare(letter)
        if prepared.type == DLQ:
            self.summary.failing[prepared.reason] += 1
            self.summary.count(letter, f"still failing ({prepared.reason})")
            self._log_letter(letter, "left", prepared)
            return None
        if self._known(prepared.event_id) or any(p.event_id == prepared.event_id for _, p in wave):
            self.summary.already[prepared.type] += 1
            self.summary.count(letter, "already stored")
            self._log_letter(letter, "skipped", prepared)
            return None
        if self.dry_run:
            self.summary.stored[prepared.type] += 1
            self.summary.count(letter, f"would store ({prepared.type})")
            self._log_letter(letter, "would store", prepared)
            return None
        return letter, prepared

    async def _send(self, wave: list[tuple[DeadLetter, Prepared]]) -> None:
        """Publish a wave and wait for every acknowledgement; the acknowledged are remembered
        (and shared) even when another one fails, which then stops the run."""
        records = [
            Record(
                p.record.topic,
                p.record.key,
                p.record.value,
                redriven_headers(p.record.headers, self.dlq, letter.partition, letter.offset),
            )
            for letter, p in wave
        ]
        results = await asyncio.gather(
            *(self._publish(record) for record in records), return_exceptions=True
        )
        failure: BaseException | None = None
        for (letter, prepared), result in zip(wave, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            self.dedup.remember(prepared.event_id)
            self.stored_ids.add(digest(prepared.event_id))
            self.summary.stored[prepared.type] += 1
            self.summary.count(letter, f"stored ({prepared.type})")
            self._log_letter(letter, "stored", prepared, result)
        with contextlib.suppress(BridgeError):
            await self.dedup.flush()
        if failure is not None:
            stored = self.summary.stored.total()
            self._log_run(_describe(failure))
            raise PublishError(
                f"Kafka did not take a re-driven record ({_describe(failure)}); {stored} stored "
                "before it: run again to go on (what was stored is skipped)"
            ) from failure

    async def _publish(self, record: Record) -> Delivery:
        budget = max(ACK_BUDGET, self.settings.ack_timeout)  # no vendor waits: more than live
        try:
            async with asyncio.timeout(budget):
                return await self.publisher.publish(record)
        except TimeoutError:
            raise PublishTimeout(f"no acknowledgement within {budget:g}s") from None

    # -- progress -----------------------------------------------------------------------------

    def _show_progress(self, *, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not final and now - self._shown < PROGRESS_EVERY:
            return
        self._shown = now
        s = self.summary
        rate = s.read / max(now - self._started, 1e-3)
        left = max(s.in_dlq - s.read, 0)
        eta = f", about {left / rate:.0f} s left" if rate > 0 and left and not final else ""
        print(
            f"redrive: {s.read}/{s.in_dlq} read, {s.stored.total()} stored, "
            f"{s.already.total()} already, {s.failing.total()} failing, "
            f"{rate:.0f}/s{eta}",
            file=self.progress,
            flush=True,
        )


async def _seek_to_time(read: Reading, since_ms: int) -> None:
    """Each partition from its first record at or after `since_ms` (from the end when none
    is); from the beginning where the broker cannot say."""
    if not read.partitions:
        return
    try:
        found = await read.consumer.offsets_for_times(dict.fromkeys(read.partitions, since_ms))
    except (KafkaError, ValueError):  # brokers that do not index time: read it all
        return
    for tp in read.partitions:
        offset = found.get(tp)
        if offset is None:
            await read.consumer.seek_to_end(tp)
        else:
            read.consumer.seek(tp, offset.offset)


@contextlib.contextmanager
def _interruptible(run: Redrive) -> Iterator[None]:
    """Ctrl-C stops reading and lets the wave in flight finish; a second one stops at once."""
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        run.stopping = True
        # Python's own handler again: a second Ctrl-C raises KeyboardInterrupt at once.
        loop.remove_signal_handler(signal.SIGINT)
        print("redrive: stopping after the records in flight (Ctrl-C again: now)", file=sys.stderr)

    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests)
        yield
        return
    try:
        yield
    finally:
        if not run.stopping:
            loop.remove_signal_handler(signal.SIGINT)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def redrive(
    settings: Settings,
    filters: Filters,
    *,
    dry_run: bool = False,
    publisher: Publisher | None = None,
    progress: IO[str] | None = None,
) -> Summary:
    return await Redrive(
        settings, filters, dry_run=dry_run, publisher=publisher, progress=progress
    ).run()
