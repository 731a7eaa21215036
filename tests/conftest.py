from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bridge.app import create_app
from bridge.broker import EmbeddedBroker, create_topics, free_port
from bridge.publish import Publisher
from bridge.routing import all_topics
from bridge.settings import Settings, load_settings
from bridge.supervisor import server_config
from tests.registry_double import Registry

T = TypeVar("T")
SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notifications"


@pytest.fixture(autouse=True)
def _open_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process apps in tests serve without a token unless a test sets one; the processes
    # started by tests get their environment explicitly, with a token.
    monkeypatch.setenv("BRIDGE_ALLOW_UNAUTHENTICATED", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Any test that needs the real broker is marked `kafka`, so `-m "not kafka"` runs the rest.
    for item in items:
        if {"broker", "kafka_settings"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def sample(kind: str = "call") -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((SAMPLES / f"{kind}.json").read_bytes())
    return data


def sample_bytes(kind: str = "call") -> bytes:
    return (SAMPLES / f"{kind}.json").read_bytes()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real broker (Tansu) for the session, on a free loopback port."""
    embedded = EmbeddedBroker()
    try:
        embedded.start()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"cannot start the embedded broker: {exc}", returncode=3)
    yield embedded
    embedded.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix per test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> Settings:
    settings = load_settings(
        spool_dir=tmp_path / "spool",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=False,  # the embedded broker lacks InitProducerId
        topic_prefix=topic_prefix,
        port=free_port(),
    )
    run_sync(create_topics(broker.bootstrap_servers, all_topics(topic_prefix)))
    return settings


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `bridge` process started by a test: this test's settings only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="false",
        BRIDGE_TOPIC_PREFIX=settings.topic_prefix,
        BRIDGE_PORT=str(settings.port),
        BRIDGE_SPOOL_DIR=str(settings.spool_dir),
    )
    env.update(extra)
    return env


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class RunningServer:
    url: str
    settings: Settings


@pytest.fixture
def server(kafka_settings: Settings) -> Iterator[RunningServer]:
    yield from run_server(kafka_settings)


def run_server(settings: Settings, publisher: Publisher | None = None) -> Iterator[RunningServer]:
    """bridge on a real uvicorn server in a thread, as httpx's own test suite does."""
    config = server_config(settings, create_app(settings, publisher))
    for url in serve_in_thread(uvicorn.Server(config)):
        yield RunningServer(url, settings)


def serve_in_thread(server: uvicorn.Server) -> Iterator[str]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass
class RunningRegistry:
    state: Registry
    url: str


@pytest.fixture
def schema_registry() -> Iterator[RunningRegistry]:
    """The registry test double, over real HTTP on a free port."""
    state = Registry()
    config = uvicorn.Config(
        state.app(), host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"
    )
    for url in serve_in_thread(uvicorn.Server(config)):
        yield RunningRegistry(state, url)


async def consume(
    bootstrap_servers: str, topics: list[str], idle: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topics`, read from the beginning until nothing new comes for `idle`
    seconds (end offsets are not trusted: the embedded broker can misreport them)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        last = time.monotonic()
        while time.monotonic() - last < idle:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
            if batch:
                last = time.monotonic()
        return records
    finally:
        await consumer.stop()
