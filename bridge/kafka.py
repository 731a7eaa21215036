"""What every Kafka client of bridge shares: the connection options; reading topics from a
chosen start until nothing new comes (end offsets are not trusted: some brokers misreport
them after a multi-record batch); creating topics, each caller with its own policy for the
ones that exist or fail; and the metadata of a cluster, asked of its brokers one by one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from bridge.errors import BrokerUnavailable
from bridge.settings import Settings

POLL_MS = 200  # each poll waits at most this long, so an idle deadline is checked as often
TOPICS_WAIT = 15.0  # seconds for test and dev topics to be created, then again to be served
T = TypeVar("T")


def _options(source: Settings | Mapping[str, Any]) -> dict[str, Any]:
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
    options = _options(source)
    if client_id is not None:
        options["client_id"] = client_id
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
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
        await _stop(consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        # With the broker gone, aiokafka's fetch task, cancelled by `stop()`, can let its
        # CancelledError out of `stop()`: it would replace the error being raised (`bridge
        # redrive`'s one line). Only a cancellation of this task goes on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def consume_until_idle(
    source: Settings | Mapping[str, Any], topics: Iterable[str], idle: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topics`, from the beginning until nothing new comes for `idle` s."""
    async with reading(source, topics) as read:
        return [record async for record in read.records(idle)]


# --- creating topics ------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """A topic as bridge would create it."""

    name: str
    partitions: int
    replication: int | None = None  # None: as many replicas as brokers, three at the most
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicError:
    """Why the broker did not create a topic: a Kafka error code and its message."""

    code: int
    message: str | None

    @property
    def name(self) -> str:
        return str(for_code(self.code).__name__)


@dataclass
class Creation:
    """What came of creating topics: each one asked for is in one of the three, in order."""

    created: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    failed: dict[str, TopicError] = field(default_factory=dict)
    # With `configs`: each existing topic's configuration (the keys of its spec's config).
    configs: dict[str, dict[str, str]] = field(default_factory=dict)


async def create_topics(
    source: Settings | Mapping[str, Any],
    specs: Iterable[TopicSpec],
    *,
    timeout: float,
    configs: bool = False,
) -> Creation:
    """Ask for every topic of `specs` in one request, all within `timeout` seconds (a broker
    that accepts and never answers must not hold a start); with `configs`, also describe those
    that existed. Kafka's own errors, OSError and TimeoutError are the caller's to word."""
    wanted = list(specs)
    creation = Creation()
    admin = AIOKafkaAdminClient(**_options(source))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            brokers = len(admin._client.cluster.brokers())  # noqa: SLF001 - no public count
            response = await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        spec.partitions,
                        max(1, min(3, brokers)) if spec.replication is None else spec.replication,
                        topic_configs=spec.config,
                    )
                    for spec in wanted
                ]
            )
            errors = {t: TopicError(code, message) for t, code, message in response.topic_errors}
            for spec in wanted:
                error = errors.get(spec.name)  # a topic the answer leaves out had no error
                if error is None or error.code == 0:
                    creation.created.append(spec.name)
                elif error.code == TopicAlreadyExistsError.errno:
                    creation.existed.append(spec.name)
                else:
                    creation.failed[spec.name] = error
            if configs and creation.existed:
                creation.configs = await _configs(
                    admin, [spec for spec in wanted if spec.name in creation.existed]
                )
    finally:
        await admin.close()
    return creation


async def _configs(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> dict[str, dict[str, str]]:
    described = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, s.name, dict.fromkeys(s.config)) for s in specs]
    )
    # A resource: (error code, error message, type, name, entries); an entry: (key, value, ...).
    return {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}
        for response in described
        for resource in response.resources
    }


async def create_topics_and_wait(
    bootstrap_servers: str, topics: list[str], partitions: int = 3, replication: int = 1
) -> None:
    """Create `topics` (for tests, bench and `bridge dev`); those that exist already are left
    as they are. Returns once every broker serves them."""
    specs = [TopicSpec(topic, partitions, replication) for topic in topics]
    try:
        creation = await create_topics(
            {"bootstrap_servers": bootstrap_servers}, specs, timeout=TOPICS_WAIT
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot create topics on {bootstrap_servers}: {exc}") from exc
    for topic, error in creation.failed.items():
        raise BrokerUnavailable(f"cannot create topic {topic}: error {error.code} {error.message}")
    # Apache Kafka answers once the controller has the topics; the brokers learn of them a
    # moment later. Wait until they are served with a leader for every partition.
    deadline = time.monotonic() + TOPICS_WAIT
    while not _served(await _metadata(bootstrap_servers, topics), len(topics)):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(
                f"topics {topics} created but not served by {bootstrap_servers}"
            )
        await asyncio.sleep(0.05)


def _served(metadata: dict[str, Any] | None, count: int) -> bool:
    return (
        metadata is not None
        and len(metadata["topics"]) == count
        and all(
            not t["error_code"]
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in metadata["topics"]
        )
    )


# --- the metadata of a cluster --------------------------------------------------------------


@dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int  # -1: none (every replica in the ISR is down)
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def _blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    # A fresh event loop in a thread: callable from sync code, and from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def broker_ids(bootstrap_servers: str) -> set[int]:
    """The ids of the brokers a metadata request lists (registered and unfenced); empty when
    none answers."""
    metadata = _blocking(_metadata(bootstrap_servers, []))
    return {broker["node_id"] for broker in metadata["brokers"]} if metadata else set()


async def _metadata(bootstrap_servers: str, topics: list[str]) -> dict[str, Any] | None:
    # One connection per address in turn, the first answer wins: an admin client would send to
    # any broker the metadata still lists, a killed one included.
    for address in bootstrap_servers.split(","):
        host, port = address.rsplit(":", 1)
        try:
            connection = await create_conn(host, int(port), request_timeout_ms=3000)
        except (OSError, KafkaError, TimeoutError):
            continue
        try:
            response = await connection.send(MetadataRequest(topics))
        except (KafkaError, TimeoutError):
            continue
        finally:
            connection.close()
        answer: dict[str, Any] = response.to_object()
        return answer
    return None


def describe_partitions(bootstrap_servers: str, topic: str) -> list[PartitionState]:
    """Leader, replicas and in-sync replicas of each partition of `topic`, from the first of
    `bootstrap_servers` that answers (sync; callable inside a running event loop)."""
    metadata = _blocking(_metadata(bootstrap_servers, [topic]))
    if metadata is None:
        raise BrokerUnavailable(f"no broker of {bootstrap_servers} answers")
    (described,) = metadata["topics"]
    if described["error_code"]:
        raise BrokerUnavailable(f"cannot describe {topic}: error {described['error_code']}")
    return sorted(
        (
            PartitionState(p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
            for p in described["partitions"]
        ),
        key=lambda state: state.partition,
    )
