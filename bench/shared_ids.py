"""What sharing the event ids costs per notification: CPU to publish an id and to follow one
(learning it into a full duplicate memory), and bytes on Kafka, measured with bridge's own
code (`bridge.kafka.event_ids`) against the bench's broker. `python -m bench.shared_ids` alone, or
from `make bench`."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bridge.devbrokers.launcher import EmbeddedBroker
from bridge.kafka.event_ids import (
    SHARE_EVERY,
    decode_ids,
    ensure_topic,
    event_ids_topic,
    id_consumer,
    id_producer,
    send_ids,
)
from bridge.settings import Settings
from bridge.state.dedup import Deduplicator, digest

IDS = 20_000
BATCH = 100  # ids a batch: 1,000 notifications/s shared every SHARE_EVERY (0.1 s)


def record_bytes(batch: int = BATCH) -> float:
    """Bytes an id takes in a record batch as Kafka stores it (v2, uncompressed), before
    replication: the 61-byte batch header shared, each record's key, value and varints."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    now = int(time.time() * 1000)
    for i in range(batch):
        key = digest(f"call:{uuid.uuid4().hex}")
        builder.append(i, now + i, key, (now + i).to_bytes(8, "big"), [])
    return len(builder.build()) / batch


async def measure(bootstrap_servers: str, ids: int = IDS) -> dict[str, float]:
    settings = Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        kafka_enable_idempotence=False,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
    )
    spec = event_ids_topic(settings)
    problem = await ensure_topic(settings, spec)
    if problem is not None:
        raise RuntimeError(problem)
    events = [(digest(f"call:{i:032x}"), time.time()) for i in range(ids)]

    producer = id_producer(settings)
    await producer.start()
    try:
        await send_ids(producer, spec.name, events[:BATCH])  # connected, metadata known
        started = time.process_time()
        for i in range(BATCH, ids, BATCH):
            await send_ids(producer, spec.name, events[i : i + BATCH])
        publish = (time.process_time() - started) / (ids - BATCH)
    finally:
        await producer.stop()

    memory = Deduplicator(settings.dedup_window, settings.dedup_max_entries)
    for i in range(settings.dedup_max_entries):  # full, as after minutes of load
        memory.learn(digest(f"old:{i}"), time.time())
    consumer = id_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(spec.name, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        learned = 0
        started = time.process_time()
        while learned < ids:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                break
            for records in batch.values():
                learned += sum(memory.learn(key, stored) for key, stored in decode_ids(records))
        follow = (time.process_time() - started) / max(learned, 1)
    finally:
        await consumer.stop()
    return {
        "publish_us": publish * 1e6,
        "follow_us": follow * 1e6,
        "learned": learned,
        "bytes": record_bytes(),
    }


def report(row: dict[str, float], processes: int = 3) -> str:
    return "\n".join(
        [
            (
                "| per notification | publish (its process) | follow (each process) | "
                f"all {processes} processes | bytes on Kafka an id (before replication) |"
            ),
            "|---|---|---|---|---|",
            (
                f"| CPU µs | {row['publish_us']:.1f} | {row['follow_us']:.1f} | "
                f"{row['publish_us'] + processes * row['follow_us']:.1f} | {row['bytes']:.1f} |"
            ),
            "",
            (
                f"{row['learned']:.0f} ids followed into a full memory; published in batches "
                f"of {BATCH} (1,000 notifications/s shared every {SHARE_EVERY:g} s). Every "
                "process follows every id, its own included: N processes cost publish + "
                "N x follow per notification in all."
            ),
        ]
    )


def main() -> None:
    with EmbeddedBroker() as broker:
        row = asyncio.run(measure(broker.bootstrap_servers, int(os.environ.get("IDS", IDS))))
    print(report(row))


if __name__ == "__main__":
    main()
