"""What every Kafka client of bridge shares: the connection options, a stop that never waits
without bound nor leaves a socket open, and reading topics from a chosen start until nothing
new comes (end offsets are not trusted: some brokers misreport them after a multi-record
batch). Creating, checking and describing topics is `kafka.admin`'s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.conn import CloseReason
from aiokafka.errors import ProducerClosed
from aiokafka.helpers import create_ssl_context

from bridge.settings import Settings

logger = logging.getLogger(__name__)

POLL_MS = 200  # each poll waits at most this long, so an idle deadline is checked as often


def options_of(source: Settings | Mapping[str, Any]) -> dict[str, Any]:
    """Client options from the settings, or as given (`{\"bootstrap_servers\": ...}`)."""
    return dict(kafka_options(source) if isinstance(source, Settings) else source)


def kafka_options(s: Settings) -> dict[str, Any]:
    """Connection and security options shared by every Kafka client of bridge."""
    options: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.kafka_client_id,
        "security_protocol": s.kafka_security_protocol,
    }
    if s.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = create_ssl_context(
            cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None,
            certfile=str(s.kafka_ssl_certfile) if s.kafka_ssl_certfile else None,
            keyfile=str(s.kafka_ssl_keyfile) if s.kafka_ssl_keyfile else None,
        )
    if s.kafka_sasl_mechanism:
        options["sasl_mechanism"] = s.kafka_sasl_mechanism
        options["sasl_plain_username"] = s.kafka_sasl_username
        options["sasl_plain_password"] = s.kafka_sasl_password.get_secret_value()
    return options


STOP_TIMEOUT = 2.0  # seconds a client that holds nothing to deliver gets to stop


async def stop_within(client: Any, timeout: float = STOP_TIMEOUT) -> None:
    """Stop an aiokafka producer, consumer, admin or plain client within `timeout` seconds,
    whatever the broker does, and leave none of its connections open. Errors are logged, never
    raised: stopping goes on. Only a cancellation of the caller goes on out of it.

    A producer's `stop()` first waits for what it holds to be acknowledged: a broker that
    accepts and never answers (frozen, or behind a stalled network) holds it for the request
    timeout and more. Given up on, the stop left the producer's sender running and its sockets
    open for the life of the process: one more each time a producer was renewed, or each
    retry of the event-id follower while Kafka was away. So past the timeout, or when the
    caller is cancelled, the client's tasks are cancelled and its connections aborted."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    try:
        async with asyncio.timeout(timeout):
            await (client.stop() if hasattr(client, "stop") else client.close())
    except TimeoutError:
        logger.warning(
            "%s did not stop within %.1fs: its connections closed", type(client).__name__, timeout
        )
    except Exception:
        logger.warning("error while stopping %s", type(client).__name__, exc_info=True)
    except asyncio.CancelledError:
        _abort(client)
        if task is not None and task.cancelling() > cancelling:
            raise  # the caller's
        # Not the caller's: with the broker gone, a consumer's fetch task that `stop()` cancels
        # can let its CancelledError out of `stop()`, and it would replace the error being
        # raised (`bridge redrive`'s one line) or end the event-id follower for good.
        logger.debug("%s let a cancellation out of its stop", type(client).__name__)
    else:
        return
    _abort(client)
    await asyncio.sleep(0)  # the aborted transports close their sockets on the loop's next turn


def _abort(client: Any) -> None:
    try:
        _cut(client)
    except Exception:  # a stop goes on whatever the abort meets
        logger.warning("cannot abort %s", type(client).__name__, exc_info=True)


def _cut(client: Any) -> None:
    """What a `stop()` cut short leaves behind: the tasks that would send, fetch or reconnect
    cancelled, every connection aborted (its unsent bytes dropped; a close would wait for them
    to be written, and a frozen broker reads nothing), and what it held refused: a request
    waiting on it falls back to the spool, as on any error in flight.

    aiokafka has no forced close: this reaches into its parts (as of 0.14, pinned in
    constraints.txt; tests/test_publish.py checks a producer's), each looked up leniently so
    that a renamed one costs the abort, never the stop."""
    kafka: Any = client
    if not isinstance(client, AIOKafkaClient):  # a producer's client is public, the others' not
        kafka = getattr(client, "client", None) or getattr(client, "_client", None)
    sender, fetcher = getattr(client, "_sender", None), getattr(client, "_fetcher", None)
    sending = getattr(sender, "sender_task", None)
    for task in (
        sending,
        getattr(fetcher, "_fetch_task", None),
        getattr(kafka, "_sync_task", None),
    ):
        if task is not None:
            task.cancel()
    if sending is not None:
        # Twice: cancelled, the sender waits for its requests in flight, which the aborted
        # connections fail; each would then put its batch back where `fail_all` just took it
        # from (aiokafka's KeyError, logged at ERROR). The second cancel reaches them first.
        asyncio.get_running_loop().call_soon(sending.cancel)
    accumulator = getattr(client, "_message_accumulator", None)
    if accumulator is not None:  # whoever waits on a record it held is answered, not left
        accumulator.fail_all(ProducerClosed())
    for connection in list(getattr(kafka, "_conns", {}).values()):
        writer = getattr(connection, "_writer", None)
        if writer is not None:
            writer.transport.abort()
        connection.close(reason=CloseReason.SHUTDOWN)


@dataclass(frozen=True)
class Reading:
    """A consumer assigned to every partition of the topics that exist."""

    consumer: AIOKafkaConsumer
    partitions: list[TopicPartition]
    missing: list[str]  # topics asked for that the broker does not have (yet)

    async def records(
        self, idle: float | None, *, to_end: bool = False
    ) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
        """The records as they come, until none came for `idle` seconds (None: forever); with
        `to_end`, also until every partition is at the end offset it had when this began (only
        for a broker whose end offsets can be trusted)."""
        if not self.partitions:
            return
        ends = await self.consumer.end_offsets(self.partitions) if to_end else {}
        last = time.monotonic()
        while idle is None or time.monotonic() - last < idle:
            if to_end and all([await self.consumer.position(tp) >= n for tp, n in ends.items()]):
                return
            batch = await self.consumer.getmany(timeout_ms=POLL_MS)
            for messages in batch.values():
                for message in messages:
                    yield message
            if batch:
                last = time.monotonic()


@contextlib.asynccontextmanager
async def reading(
    source: Settings | Mapping[str, Any],
    topics: Iterable[str],
    *,
    from_beginning: bool = True,
    client_id: str | None = None,
) -> AsyncIterator[Reading]:
    """Read `topics` without a consumer group (assigned partitions start at once and never
    move committed offsets), from the oldest record or from the end. `source` is the
    settings, or client options as `kafka_options` gives them (`{"bootstrap_servers": ...}`)."""
    options = options_of(source)
    if client_id is not None:
        options["client_id"] = client_id
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()  # a start that fails may have connected already: stopped too
        # The metadata of every topic, kept: `consumer.topics()` fetches the same and drops it,
        # and `consumer.partitions_for_topic` knows only the topics a consumer tracks, none here
        # (Tansu answers a metadata request for no topic with all of them, which hid this).
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
        available = cluster.topics()
        wanted = list(topics)
        partitions = [
            TopicPartition(topic, p)
            for topic in wanted
            if topic in available
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        if partitions:
            consumer.assign(partitions)
            if from_beginning:
                await consumer.seek_to_beginning(*partitions)
            else:
                await consumer.seek_to_end(*partitions)
        yield Reading(consumer, partitions, [t for t in wanted if t not in available])
    finally:
        await stop_within(consumer)


async def consume_until_idle(
    source: Settings | Mapping[str, Any], topics: Iterable[str], idle: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topics`, from the beginning until nothing new comes for `idle` s."""
    async with reading(source, topics) as read:
        return [record async for record in read.records(idle)]
