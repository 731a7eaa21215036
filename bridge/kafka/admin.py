"""The one path of bridge to Kafka's topic administration: creating topics (each caller's
policy for the ones that exist or fail passed in), checking those bridge writes against the
metadata (missing, not describable), and describing a cluster's partitions and brokers (for
the development brokers and tests). Kafka's own errors, OSError and TimeoutError become
bridge's in `kafka.errors`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from bridge.errors import BrokerUnavailable
from bridge.kafka.client import options_of, stop_within
from bridge.kafka.errors import UNREACHABLE, unavailable
from bridge.settings import Settings

TOPICS_WAIT = 15.0  # seconds for test and dev topics to be created, then again to be served
MISSING = "missing"
NOT_DESCRIBABLE = "not authorised to describe"
T = TypeVar("T")


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
    admin = AIOKafkaAdminClient(**options_of(source))
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
        await stop_within(admin)
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
    except UNREACHABLE as exc:
        raise unavailable(f"cannot create topics on {bootstrap_servers}", exc) from exc
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


async def describe(client: AIOKafkaClient, topics: Iterable[str]) -> dict[str, str]:
    """The problem of each topic the broker's metadata knows of (missing, or not describable
    by bridge's principal); topics without one are left out. Never creates a topic."""
    request = MetadataRequest(list(topics), allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    problems = {}
    for topic in response.to_object()["topics"]:
        if topic["error_code"] == UnknownTopicOrPartitionError.errno:
            problems[topic["topic"]] = MISSING
        elif topic["error_code"] == TopicAuthorizationFailedError.errno:
            problems[topic["topic"]] = NOT_DESCRIBABLE
        # Anything else (a leader being elected) passes: the producer waits for it.
    return problems


# --- the metadata of a cluster, for the development brokers and tests -------------------------


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
