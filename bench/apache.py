"""The bridge on Apache Kafka's own broker (one node, KRaft, idempotent producer on, as in
production) beside the same bridge on Tansu: same bodies, concurrency and server settings."""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bench import benthos
from bridge.devbrokers.launcher import KafkaCluster, kafka_missing
from bridge.kafka.admin import create_topics_and_wait
from bridge.notifications.routing import all_topics

Rows = list[dict[str, float]]


class Say(Protocol):
    def __call__(self, text: str = ...) -> None: ...


@dataclass
class ApacheKafka:
    """What the harness reads of a broker: its address and the process whose CPU it counts."""

    cluster: KafkaCluster
    idempotence: bool = True  # the bridge runs with BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=true

    @property
    def bootstrap_servers(self) -> str:
        return self.cluster.bootstrap_servers

    @property
    def pid(self) -> int | None:
        return self.cluster.brokers[0].pid


def wanted(choice: str, say: Say) -> bool:
    """auto: when Java (and Maven, for the first fetch) are there; on: always; off: never."""
    if choice == "off":
        return False
    missing = kafka_missing()
    if missing is not None:
        if choice == "on":
            raise SystemExit(f"--apache-kafka on: {missing}")
        say(f"## Apache Kafka\n\nNot measured: {missing}.\n")
        return False
    return True


def ratio(upper: Rows, lower: Rows) -> str:
    """Ratio of the medians of req/s, with the spread the runs allow (worst to best pairing)."""
    up, low = [r["rps"] for r in upper], [r["rps"] for r in lower]
    middle = statistics.median(up) / statistics.median(low)
    if len(up) == 1 and len(low) == 1:
        return f"{middle:.0%}"
    return f"{middle:.0%} ({min(up) / max(low):.0%}-{max(up) / min(low):.0%})"


def section(  # noqa: PLR0913, PLR0917 - the harness's pieces, handed in: __main__ stays as is
    args: argparse.Namespace,
    tansu: object,
    measure: Callable[..., dict[str, float]],
    line: Callable[[str, Rows], str],
    say: Say,
    partitions: int,
) -> None:
    say("## The bridge on Apache Kafka (one node, idempotence on) and on Tansu\n")
    with KafkaCluster(1) as cluster:
        say(
            f"Apache Kafka {cluster.version}, one combined broker and controller (KRaft) on "
            "the same machine, JVM heap 512 MB; the bridge with the idempotent producer (as in "
            "production; Tansu has no InitProducerId, so it runs without), and Benthos with its "
            "idempotent producer on the same broker. Same bodies, "
            f"concurrency and {partitions} partitions; req/s as ratio of medians, (spread: "
            "slowest over fastest run to fastest over slowest). The runs alternate, Tansu then "
            "Apache Kafka, so that what else loads the machine weighs on both alike.\n"
        )
        asyncio.run(
            create_topics_and_wait(cluster.bootstrap_servers, all_topics("bench."), partitions)
        )
        broker = ApacheKafka(cluster)
        say("| run | req/s | p50 ms | p99 ms | max ms | errors | peak RSS MB | server CPU µs/req |")
        say("|---|---|---|---|---|---|---|---|")
        ratios, against = [], []
        rival = benthos.missing() is None  # Benthos with its idempotent producer too
        for body in args.bodies.split(","):
            on_tansu: Rows = []
            on_kafka: Rows = []
            rivals: Rows = []
            for _ in range(args.repeat):
                on_tansu.append(measure("bridge", body, tansu, args))
                on_kafka.append(measure("bridge", body, broker, args))
                if rival:
                    rivals.append(measure("benthos", body, broker, args))
            say(line(f"bridge on Tansu, {body}", on_tansu))
            say(line(f"bridge on Apache Kafka, {body}", on_kafka))
            ratios.append(f"{body}: {ratio(on_kafka, on_tansu)}")
            if rivals:
                say(line(f"Benthos on Apache Kafka, {body}", rivals))
                cpu = statistics.median(
                    b["server_cpu_us"] / a["server_cpu_us"]
                    for a, b in zip(rivals, on_kafka, strict=True)
                )
                against.append(f"{body}: {ratio(on_kafka, rivals)} of the rate, {cpu:.2f}x the CPU")
        say()
        say(f"Apache Kafka / Tansu, req/s: {'; '.join(ratios)}.\n")
        if against:
            say(f"On Apache Kafka, bridge ÷ Benthos: {'; '.join(against)}.\n")
