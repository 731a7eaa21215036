"""Event ids shared through `<prefix>event-ids`: several bridge processes, one memory.

Each test runs `bridge serve` processes (separate spools) on one broker, sends each
notification 1 to 6 times to random processes, retries spaced as the vendor's are (after the
previous answer, here 1.5 s instead of a minute), and counts by the `event-id` header what
landed. Both brokers, through the suite's `broker` matrix: Tansu and a one-node Apache Kafka.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.event_ids import (
    EventIdTopic,
    config_problem,
    decode_ids,
    event_ids_topic,
    id_producer,
    send_ids,
)
from bridge.notifications.routing import all_topics
from bridge.settings import load_settings
from bridge.state.dedup import digest
from bridge.telemetry.metrics import Metrics
from tests.helpers import Broker, notification, process_env
from tests.traffic import BridgeProcess, Landed, listening

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

TOKEN = "ids-token"
RETRY_AFTER = 1.5  # seconds after the previous answer (the vendor waits a minute)


@pytest.fixture
def prefix(broker: Broker) -> str:
    name = f"t{uuid.uuid4().hex[:10]}."
    asyncio.run(create_topics_and_wait(broker.bootstrap_servers, all_topics(name)))
    return name


def bridge_process(broker: Broker, prefix: str, directory: Path, **extra: str) -> BridgeProcess:
    """`bridge serve` on `broker`, on its own port and spool."""
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=broker.idempotence,
        topic_prefix=prefix,
        port=free_port(),
        spool_dir=directory / "spool",
    )
    env = process_env(settings, BRIDGE_AUTH_TOKENS=TOKEN, BRIDGE_LOG_LEVEL="info", **extra)
    return BridgeProcess(env, directory / "bridge.log")


def workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for bridge in started:
        bridge.kill()


def start_all(processes: list[BridgeProcess], workers: int = 1) -> None:
    for bridge in processes:
        bridge.launch()
    for bridge in processes:
        bridge.wait_serving(workers)


async def post(client: httpx2.AsyncClient, url: str, body: bytes) -> int:
    return (await client.post(url, content=body)).status_code


async def send_retries(
    targets: list[BridgeProcess], cases: int, seed: int, halfway: object = None
) -> dict[int, list[int]]:
    """Each case sent 1-6 times, each time to a random target, the next try RETRY_AFTER after
    the previous answer; `halfway` (a coroutine function) runs after the third round."""
    rng = random.Random(seed)  # noqa: S311 - a test's choices, seeded to repeat
    times = {case: rng.randint(1, 6) for case in range(cases)}
    answers: dict[int, list[int]] = {case: [] for case in times}
    # A connection of its own for each request: with workers, the kernel picks one for each.
    fresh = httpx2.Limits(max_keepalive_connections=0)
    async with httpx2.AsyncClient(timeout=15, limits=fresh) as client:
        for attempt in range(6):
            if attempt == 3 and callable(halfway):
                await halfway()
            live = [b for b in targets if b.process is not None]
            due = [case for case, count in times.items() if attempt < count]
            statuses = await asyncio.gather(
                *(
                    post(client, rng.choice(live).url, notification(f"case-{case}", 0))
                    for case in due
                )
            )
            for case, status in zip(due, statuses, strict=True):
                answers[case].append(status)
            await asyncio.sleep(RETRY_AFTER)
    return answers


async def landed(broker: Broker, prefix: str) -> Counter[str]:
    """What is in `<prefix>call`, by event id."""
    return Landed.of(await broker.consume([f"{prefix}call"], idle=2.0)).counts


def metric(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


def lag_report(texts: list[str]) -> str:
    """The share lag, from the processes' histograms: mean and the share under each bound."""
    count = sum(metric(t, "bridge_dedup_share_lag_seconds_count") for t in texts)
    total = sum(metric(t, "bridge_dedup_share_lag_seconds_sum") for t in texts)
    within = {
        bound: sum(
            metric(t, f'bridge_dedup_share_lag_seconds_bucket{{le="{bound}"}}') for t in texts
        )
        for bound in ("0.1", "0.2", "0.5", "1.0")
    }
    shares = ", ".join(f"<= {b} s: {n / count:.0%}" for b, n in within.items()) if count else ""
    return (
        f"share lag: {count:.0f} ids learned, mean {total / max(count, 1) * 1000:.0f} ms; {shares}"
    )


def assert_once_each(answers: dict[int, list[int]], counts: Counter[str]) -> None:
    assert all(status == 200 for statuses in answers.values() for status in statuses), answers
    expected = Counter({f"call:case-{case}/0": 1 for case in answers})
    lost = sorted(set(expected) - set(counts))
    twice = {event_id: n for event_id, n in counts.items() if n > 1}
    assert lost == [], f"{len(lost)} lost"
    assert twice == {}, f"{len(twice)} stored more than once"
    assert counts == expected


async def test_three_processes_one_restarted_store_each_notification_once(
    broker: Broker, prefix: str, tmp_path: Path, bridges: list[BridgeProcess]
) -> None:
    bridges += [bridge_process(broker, prefix, tmp_path / f"p{i}") for i in range(3)]
    for i in range(3):
        (tmp_path / f"p{i}").mkdir()
    await asyncio.to_thread(start_all, bridges)

    async def restart() -> None:
        assert await asyncio.to_thread(bridges[1].terminate) == 0
        bridges[1].launch()
        await asyncio.to_thread(bridges[1].wait_serving)

    answers = await send_retries(bridges, cases=24, seed=15, halfway=restart)
    counts = await landed(broker, prefix)
    texts = [b.metrics() for b in bridges]
    print(f"\n{broker.name}, 3 processes: {lag_report(texts)}")
    assert_once_each(answers, counts)
    assert sum(metric(t, "bridge_dedup_learned_total") for t in texts) > 0
    assert all(metric(t, "bridge_dedup_shared") == 1 for t in texts)
    assert "event ids of the last" in bridges[1].log.read_text()


async def test_three_workers_one_killed_store_each_notification_once(
    broker: Broker, prefix: str, tmp_path: Path, bridges: list[BridgeProcess]
) -> None:
    bridge = bridge_process(broker, prefix, tmp_path, BRIDGE_WORKERS="3")
    bridges.append(bridge)
    await asyncio.to_thread(start_all, bridges, 3)

    async def kill_a_worker() -> None:
        await asyncio.sleep(0.5)  # the last answers' ids are shared (every 0.1 s)
        assert bridge.process is not None
        os.kill(workers_of(bridge.process.pid)[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while listening(bridge.port) == 3 and time.monotonic() < deadline:  # it is gone
            await asyncio.sleep(0.02)
        await asyncio.to_thread(bridge.wait_serving, 3)  # its replacement is serving

    answers = await send_retries(bridges, cases=24, seed=16, halfway=kill_a_worker)
    counts = await landed(broker, prefix)
    text = bridge.metrics()
    print(f"\n{broker.name}, 3 workers: {lag_report([text])}")
    assert_once_each(answers, counts)
    assert metric(text, "bridge_dedup_learned_total") > 0


async def test_without_the_topic_nothing_is_lost_and_the_duplicates_are_counted(
    broker: Broker, prefix: str, tmp_path: Path, bridges: list[BridgeProcess]
) -> None:
    if broker.name == "tansu":
        pytest.skip("Tansu creates a deleted topic again on the next write: it cannot be away")
    bridges += [bridge_process(broker, prefix, tmp_path / f"p{i}") for i in range(3)]
    for i in range(3):
        (tmp_path / f"p{i}").mkdir()
    await asyncio.to_thread(start_all, bridges)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([f"{prefix}event-ids"])
    finally:
        await admin.close()

    answers = await send_retries(bridges, cases=24, seed=17)
    counts = await landed(broker, prefix)
    texts = [b.metrics() for b in bridges]
    assert all(status == 200 for statuses in answers.values() for status in statuses)
    assert set(counts) == {f"call:case-{case}/0" for case in answers}, "lost"
    duplicates = sum(counts.values()) - len(counts)
    unshared = sum(metric(t, "bridge_dedup_unshared_total") for t in texts)
    assert unshared > 0
    assert duplicates <= unshared
    assert all(metric(t, "bridge_dedup_shared") == 0 for t in texts)
    # A retry to the process that stored the first try is still dropped: its own memory.
    dropped = 'bridge_notifications_total{outcome="duplicate",type="call"}'
    assert sum(metric(t, dropped) for t in texts) > 0


def test_the_topic_is_compacted_and_forgets_after_the_window() -> None:
    spec = event_ids_topic(load_settings(topic_prefix="x.", dedup_window=1800))
    assert spec.name == "x.event-ids"
    assert spec.config["cleanup.policy"] == "compact,delete"
    assert spec.config["retention.ms"] == "1800000"
    assert config_problem(spec, dict(spec.config)) is None
    assert "cleanup.policy" in (config_problem(spec, {"cleanup.policy": "delete"}) or "")
    assert "shorter" in (
        config_problem(spec, {"cleanup.policy": "compact,delete", "retention.ms": "1000"}) or ""
    )


@pytest.mark.parametrize("partitions", [1, 3])
async def test_ids_are_sent_as_send_would_send_them(broker: Broker, partitions: int) -> None:
    """Written into batches, not `send()` one by one: each id still lands once, in the
    partition aiokafka's partitioner picks for its key, with its time as value and timestamp;
    1,500 ids fill more than one batch per partition."""
    topic = f"t{uuid.uuid4().hex[:10]}.event-ids"
    await create_topics_and_wait(broker.bootstrap_servers, [topic], partitions)
    settings = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers)
    stored = 1_700_000_000.123
    events = [(digest(f"call:{n}"), stored + n / 1000) for n in range(1500)]
    producer = id_producer(settings)
    await producer.start()
    try:
        await send_ids(producer, topic, events)
    finally:
        await producer.stop()
    records = await broker.consume([topic])
    assert sorted(decode_ids(records)) == sorted((k, round(t * 1000) / 1000) for k, t in events)
    every = list(range(partitions))
    for record in records:
        assert record.key is not None
        assert record.partition == DefaultPartitioner()(record.key, every, every)
        assert record.timestamp == round(dict(events)[record.key] * 1000)
    assert len({r.partition for r in records}) == partitions


async def test_a_start_reads_back_no_more_ids_than_memory_keeps(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window busier than memory: only the newest `dedup_max_entries` ids are read back
    (older ones would be forgotten as soon as learned), however many the topic holds, and a
    few at a time."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=broker.idempotence,
        topic_prefix=prefix,
        dedup_max_entries=1000,
    )
    topic = event_ids_topic(settings).name
    await create_topics_and_wait(broker.bootstrap_servers, [topic], 1)
    now = time.time()
    events = [(digest(f"call:{n}"), now - 60 + n / 1000) for n in range(3000)]  # oldest first
    producer = id_producer(settings)
    await producer.start()
    try:
        for at in range(0, len(events), 500):  # in order: the newest are the last offsets
            await send_ids(producer, topic, events[at : at + 500])
    finally:
        await producer.stop()
    learned: list[bytes] = []

    def learn(key: bytes, _: float) -> bool:
        learned.append(key)
        return True

    taken: list[int] = []  # records handed back by each read of the consumer
    getmany = AIOKafkaConsumer.getmany

    async def counted(self: AIOKafkaConsumer, *partitions: object, **options: object) -> object:
        batch = await getmany(self, *partitions, **options)
        taken.append(sum(len(records) for records in batch.values()))
        return batch

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", counted)
    monkeypatch.setattr("bridge.kafka.event_ids.READ_BATCH", 300)
    follower = EventIdTopic(settings, Metrics())
    await follower.start(learn)
    await follower.stop()
    # Read a few hundred at a time, not a whole fetch at once (peak memory at start).
    assert max(taken) <= 300 < sum(taken)
    newest = {key for key, _ in events[-1000:]}
    assert newest <= set(learned)  # every id memory would keep
    if broker.end_offsets_trusted:  # Tansu's can be short: it then reads a little more
        assert len(learned) == 1000
