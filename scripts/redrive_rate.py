"""How fast `bridge redrive` goes: N dead letters of a type added later, re-driven on a broker
of its own (`--broker tansu|kafka`), then the same run again (all skipped).

    .venv/bin/python scripts/redrive_rate.py --count 5000 --broker kafka
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bridge.commands.redrive import Filters, redrive
from bridge.container import build_pipeline
from bridge.devbrokers.launcher import EmbeddedBroker, KafkaCluster
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.publish import MemoryPublisher
from bridge.notifications.routing import all_topics
from bridge.settings import load_settings
from tests.helpers import NEW_TYPE, schema_dir_with_new_type, task_end


async def measure(bootstrap: str, count: int, idempotence: bool, folder: Path) -> None:
    prefix = f"rate{int(time.time())}."
    await create_topics_and_wait(bootstrap, [*all_topics(prefix), f"{prefix}{NEW_TYPE}"])
    settings = load_settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=idempotence,
        topic_prefix=prefix,
        spool_dir="",
        dedup_shared=False,
    )
    # The dead letters as the service writes them (today's schemas do not know the type).
    pipeline = build_pipeline(settings, MemoryPublisher())
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        sent = []
        for n in range(count):
            record = pipeline.prepare(task_end(f"c{n % 500}", f"t{n}"), "", time.time()).record
            sent.append(
                await producer.send(record.topic, record.value, record.key, headers=record.headers)
            )
        await asyncio.gather(*sent)
    added = settings.model_copy(update={"schema_dir": schema_dir_with_new_type(folder)})
    for run in ("first", "again"):
        started = time.perf_counter()
        summary = await redrive(added, Filters())
        took = time.perf_counter() - started
        print(f"{run}: {summary.line()} in {took:.1f} s ({count / took:.0f} dead letters/s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    args = parser.parse_args()
    broker = KafkaCluster(brokers=1) if args.broker == "kafka" else EmbeddedBroker()
    broker.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(
                measure(broker.bootstrap_servers, args.count, args.broker == "kafka", Path(folder))
            )
    finally:
        broker.close() if isinstance(broker, KafkaCluster) else broker.stop()


if __name__ == "__main__":
    main()
