"""The topics bridge writes: what they need, the check at start (or their creation, when a
setting asks for it), and the watch that names, while bridge runs, a topic the broker no
longer has or whose writes it refuses (`/readyz`).

Production clusters rarely create topics on first use, and one created that way gets the
broker's defaults (often one replica): so bridge never asks for it, and says what to create.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient

from bridge.errors import PublishRefused, TopicUnavailable
from bridge.kafka.admin import MISSING, NOT_DESCRIBABLE, TopicSpec, create_topics, describe
from bridge.kafka.client import kafka_options, stop_within
from bridge.kafka.errors import UNREACHABLE, unavailable
from bridge.notifications.routing import topics_of
from bridge.settings import Settings

logger = logging.getLogger(__name__)

CHECK_SECONDS = 2.0  # ask the broker at most this often (readiness probes come often)
TRUST_SECONDS = 10.0  # a topic found missing this recently is refused without waiting for Kafka
PROBE_TIMEOUT = 1.5  # a probe after a failed publish: within the vendor's 10 s with the budget


def min_insync_replicas(replication: int) -> int:
    """2 of 3 replicas: one broker may be down (a rolling restart) while writes go on, and an
    acknowledged record is on two brokers. Fewer for smaller topics (development)."""
    return max(1, min(2, replication - 1))


def topic_configs(settings: Settings) -> dict[str, str]:
    """The topic-level settings bridge needs beside partitions and replication."""
    replication = settings.kafka_topic_replication_factor
    return {
        "min.insync.replicas": str(min_insync_replicas(replication)),
        # Kafka's default (1 MiB + 12) is below the largest record bridge sends.
        "max.message.bytes": str(settings.kafka_max_request_size),
    }


def create_command(settings: Settings, topics: list[str]) -> str:
    """The `kafka-topics.sh` command line that creates `topics` as bridge needs them."""
    options = (
        f"--partitions {settings.kafka_topic_partitions} "
        f"--replication-factor {settings.kafka_topic_replication_factor}"
    ) + "".join(f" --config {key}={value}" for key, value in topic_configs(settings).items())
    create = f"kafka-topics.sh --bootstrap-server {settings.kafka_bootstrap_servers} --create"
    if len(topics) == 1:
        return f"{create} --topic {topics[0]} {options}"
    return f"for t in {' '.join(topics)}; do {create} --topic $t {options}; done"


async def ensure_topics(settings: Settings) -> list[str]:
    """At start: every topic bridge writes exists, or TopicUnavailable names the first one
    missing and the command that creates them all; with BRIDGE_KAFKA_CREATE_TOPICS=true the
    missing ones are created instead. Returns the topics created."""
    topics = topics_of(settings)
    client = AIOKafkaClient(**kafka_options(settings))
    try:
        async with asyncio.timeout(settings.kafka_connect_timeout):
            await client.bootstrap()
            problems = await describe(client, topics)
    except UNREACHABLE as exc:
        raise unavailable(
            f"cannot ask Kafka at {settings.kafka_bootstrap_servers} about the topics", exc
        ) from exc
    finally:
        await stop_within(client)
    hidden = [t for t in topics if problems.get(t) == NOT_DESCRIBABLE]
    if hidden:
        who = settings.kafka_sasl_username or "bridge's principal"
        raise TopicUnavailable(
            f"topic {hidden[0]} cannot be described by {who} (missing, or no ACL): bridge needs "
            f"DESCRIBE and WRITE on {', '.join(hidden)} (kafka-acls.sh --add "
            f"--allow-principal User:{who} --operation Describe --operation Write --topic ...)"
        )
    missing = [t for t in topics if problems.get(t) == MISSING]
    if not missing:
        return []
    if not settings.kafka_create_topics:
        others = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise TopicUnavailable(
            f"topic {missing[0]}{others} does not exist: create it with "
            f"`{create_command(settings, missing)}`, "
            "or set BRIDGE_KAFKA_CREATE_TOPICS=true to have bridge create it"
        )
    await _create(settings, missing)
    return missing


async def _create(settings: Settings, topics: list[str]) -> None:
    configs = topic_configs(settings)
    partitions = settings.kafka_topic_partitions
    replication = settings.kafka_topic_replication_factor
    specs = [TopicSpec(t, partitions, replication, configs) for t in topics]
    try:
        creation = await create_topics(settings, specs, timeout=settings.kafka_connect_timeout)
    except UNREACHABLE as exc:
        raise unavailable("cannot create the topics", exc) from exc
    for topic, error in creation.failed.items():
        raise TopicUnavailable(
            f"cannot create topic {topic} with BRIDGE_KAFKA_TOPIC_PARTITIONS={partitions}, "
            f"BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR={replication}: "
            f"{error.name}" + (f": {error.message}" if error.message else "")
        )
    for topic in topics:  # also one a concurrent start created a moment before
        logger.info(
            "created topic %s: %d partitions, replication factor %d", topic, partitions, replication
        )


def refusal(topic: str, problem: str) -> PublishRefused:
    """The refusal of a write to a topic the broker's metadata has a problem with."""
    reason = "topic_authorization" if problem == NOT_DESCRIBABLE else "topic_missing"
    return PublishRefused(f"topic {topic} {problem}", reason)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # the metric label
    detail: str  # what the broker said


class TopicWatch:
    """What is wrong with the topics bridge writes, while it runs: the refusals the pipeline
    saw (until a write to the topic succeeds again), and what the broker's metadata says (a
    topic deleted). Without `kafka` (a publisher of the tests' own) only the refusals."""

    def __init__(self, settings: Settings, *, kafka: bool = True) -> None:
        self._settings = settings
        self.topics = topics_of(settings)
        self._kafka = kafka
        self._client: AIOKafkaClient | None = None
        self.refused: dict[str, Refusal] = {}
        self._described: dict[str, str] = {}
        self._described_at = -math.inf
        self._tried_at = -math.inf
        self._asking = asyncio.Lock()

    def refuse(self, topic: str, error: PublishRefused) -> None:
        self.refused[topic] = Refusal(error.reason, str(error))

    def accept(self, topic: str) -> None:
        """A write to `topic` succeeded: it is no longer refused (nor missing)."""
        self.refused.pop(topic, None)
        self._described.pop(topic, None)

    def missing(self, topic: str) -> str | None:
        """The topic's problem as the broker described it within TRUST_SECONDS, else None:
        no I/O, for the hot path (publishing to a missing topic waits out the ack budget)."""
        if not self._described or time.monotonic() - self._described_at > TRUST_SECONDS:
            return None
        return self._described.get(topic)

    async def problem(self, topic: str) -> str | None:
        """The topic's problem as the broker describes it now (within PROBE_TIMEOUT), else
        None: after a publish that timed out, to tell a deleted topic from a slow Kafka."""
        await self._describe(PROBE_TIMEOUT)
        return self.missing(topic)  # not what an old answer said

    @property
    def unavailable(self) -> int:
        """Topics with a problem known now (a gauge)."""
        return len(self.refused.keys() | self._described.keys())

    async def check(self) -> str | None:
        """None when every topic is fine, else each one's problem (for `/readyz`)."""
        await self._describe(2.0)
        problems = dict(self._described)
        for topic, refusal in self.refused.items():
            if topic not in problems:
                problems[topic] = f"last write refused ({refusal.detail})"
        return "; ".join(f"{topic}: {problems[topic]}" for topic in sorted(problems)) or None

    async def _describe(self, timeout: float) -> None:
        # One question at a time, at most every CHECK_SECONDS even while Kafka does not answer:
        # requests in flight and the drain never queue up behind probes.
        if not self._kafka or self._asking.locked():
            return
        if time.monotonic() - self._tried_at < CHECK_SECONDS:
            return
        async with self._asking:
            self._tried_at = time.monotonic()
            await self._ask(timeout)

    async def _ask(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                if self._client is None:
                    client = AIOKafkaClient(**kafka_options(self._settings))
                    try:
                        await client.bootstrap()
                    except BaseException:
                        await stop_within(client)
                        raise
                    self._client = client
                self._described = await describe(self._client, self.topics)
        except UNREACHABLE as exc:
            # Kafka unreachable is the `kafka` check's to report; what was known stays.
            logger.debug("cannot describe the topics: %r", exc)
            return
        self._described_at = time.monotonic()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await stop_within(client)
