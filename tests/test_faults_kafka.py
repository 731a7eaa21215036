"""Fault tests on Apache Kafka itself: brokers killed, stopped and restarted under load.

`bridge serve` runs as a process with a spool and the idempotent producer on (the production
default), in front of a three-broker cluster (replication factor 3, `min.insync.replicas=2`,
unclean leader election off, topics created beforehand) or one node. Each test posts a steady
load through the fault, then counts what was answered 2xx against what is in Kafka by event id
and checks each case's order. Every test is bounded in time and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from bridge.devbrokers.launcher import KafkaCluster, KafkaNode, kafka_classpath
from bridge.errors import BrokerUnavailable
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.notifications.routing import all_topics
from bridge.settings import load_settings
from tests.helpers import consume, process_env, require_apache_kafka, run_sync, started, wait_for
from tests.traffic import (
    Answers,
    BridgeProcess,
    Landed,
    Load,
    Sent,
    assert_kept,
    case_key,
    scrape,
)

pytestmark = [pytest.mark.faults, pytest.mark.apache, pytest.mark.timeout(300)]
logger = logging.getLogger(__name__)

TOKEN = "fault-token"
# 30 notifications/s over 50 cases, each case one after another. The spool drains a wave of
# one entry per case at a time (a case's next only after its previous is acknowledged), so
# the number of cases sets how fast it drains.
CASES, RATE = 50, 30.0
ANSWER_BOUND = 10.0  # the vendor's timeout: every answer must come before it
OUTAGE = 30.0


@pytest.fixture(autouse=True)
def _quiet_http_client(caplog: pytest.LogCaptureFixture) -> None:
    # One line per request at INFO would bury the figures and the brokers' messages.
    caplog.set_level(logging.WARNING, logger="httpx2")


def yield_cpu(node: KafkaNode) -> None:
    """Lower the priority of every thread of a broker: in production the brokers run on other
    machines, here they share two cores with the bridge and the load, and a JVM starting up
    would otherwise starve both for seconds."""
    if node.pid is None:
        return
    for task in Path(f"/proc/{node.pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), 10)


def relaunch(cluster: KafkaCluster, timeout: float = 240.0) -> None:
    """Start again every node that is down, on its own log directories and ports, all at
    once at a lower priority, and wait until each serves."""
    classpath = kafka_classpath(cluster.version)
    down = [node for node in [cluster.controller, *cluster.brokers] if not node.running]
    for node in down:
        node.launch(classpath)
        yield_cpu(node)
    deadline = time.monotonic() + timeout
    for node in down:
        node.wait_serving(deadline)
        yield_cpu(node)  # and the threads started since


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> KafkaCluster:
    """The session's three brokers beside a controller (conftest's `kafka_cluster`, which
    starts again after each test what it left down), for every test of this module but the
    last."""
    return kafka_cluster


@pytest.fixture
def single() -> Iterator[KafkaCluster]:
    """One combined broker and controller node."""
    require_apache_kafka()
    running = started(KafkaCluster(brokers=1, heap="256m"))
    for node in running.nodes.values():
        yield_cpu(node)
    yield running
    running.close()


def _waited(what: str, ready: Callable[[], bool], timeout: float, logs: list[Path]) -> float:
    """Poll `ready` until true; return the seconds it took, or fail naming the logs."""
    started = time.monotonic()
    wait_for(ready, timeout, f"{what} (logs: {', '.join(map(str, logs))})", interval=0.3)
    return time.monotonic() - started


def fully_replicated(cluster: KafkaCluster, topic: str) -> Callable[[], bool]:
    """True once every partition of `topic` has a leader and every replica in its ISR."""

    def check() -> bool:
        try:
            states = cluster.partitions(topic)
        except BrokerUnavailable:
            return False
        return all(s.leader >= 0 and set(s.isr) == set(s.replicas) for s in states)

    return check


def under_replicated(cluster: KafkaCluster, topic: str, below: int) -> Callable[[], bool]:
    """True once every partition of `topic` has fewer than `below` replicas in its ISR."""

    def check() -> bool:
        try:
            return all(len(s.isr) < below for s in cluster.partitions(topic))
        except BrokerUnavailable:
            return False

    return check


def leaderless(cluster: KafkaCluster, topic: str, node_id: int) -> Callable[[], bool]:
    """True once `node_id` leads no partition of `topic`."""

    def check() -> bool:
        try:
            return all(s.leader != node_id for s in cluster.partitions(topic))
        except BrokerUnavailable:
            return False

    return check


def bridge_for(kafka: KafkaCluster, tmp_path: Path, replication: int) -> Iterator[BridgeProcess]:
    prefix = f"f{os.urandom(5).hex()}."
    run_sync(create_topics_and_wait(kafka.bootstrap_servers, all_topics(prefix), 3, replication))
    settings = load_settings(
        spool_dir=tmp_path / "spool",
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=prefix,
        port=free_port(),
    )
    _waited("topics replicated", fully_replicated(kafka, f"{prefix}call"), 60, kafka.log_paths)
    env = process_env(
        settings,
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="true",  # the production default, which Tansu lacks
        BRIDGE_AUTH_TOKENS=TOKEN,
        BRIDGE_LOG_LEVEL="info",
    )
    process = BridgeProcess(env, tmp_path / "bridge.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def bridge(cluster: KafkaCluster, tmp_path: Path) -> Iterator[BridgeProcess]:
    """bridge on the three-broker cluster, once every node is back from the test before (all
    brokers up, every ISR full: `bridge_for` waits for it) and at a lower priority."""
    relaunch(cluster)
    for node in cluster.nodes.values():  # those conftest started again too
        yield_cpu(node)
    cluster.wait_ready(timeout=120)
    yield from bridge_for(cluster, tmp_path, replication=3)


@pytest.fixture
def lone_bridge(single: KafkaCluster, tmp_path: Path) -> Iterator[BridgeProcess]:
    yield from bridge_for(single, tmp_path, replication=1)


async def settle(load: Load, seconds: float) -> None:
    """Let the load run `seconds` more, failing early if nothing is being acknowledged."""
    await asyncio.sleep(seconds)
    recent = load.since(time.monotonic() - seconds - 1)
    assert any(s.acknowledged for s in recent), str(Answers.of(load.sent))


async def finish(
    load: Load, bridge: BridgeProcess, kafka: KafkaCluster, what: str
) -> tuple[list[Sent], Landed, dict[str, float]]:
    """Stop the load, wait for the spool to drain, read Kafka back; log the figures."""
    sent = await load.stop()
    drained = await bridge.drained(timeout=120)
    figures = await scrape(bridge.base_url)
    landed = Landed.of(await consume(kafka.bootstrap_servers, [bridge.topic], timeout=90))
    logger.info(
        "%s: %s; spooled %d, drained %.1f s after the load stopped; in Kafka %d event ids, "
        "%d duplicates; drain errors %d",
        what,
        Answers.of(sent),
        figures.get('bridge_notifications_total{outcome="spooled",type="call"}', 0),
        drained,
        len(landed.counts),
        landed.duplicates,
        figures.get('bridge_kafka_errors_total{operation="drain"}', 0),
    )
    return sent, landed, figures


def assert_all_answered_200_in_time(sent: list[Sent]) -> None:
    answers = Answers.of(sent)
    assert set(answers.statuses) == {200}, str(answers)
    assert answers.max_seconds < ANSWER_BOUND, str(answers)


def assert_no_error_answered(sent: list[Sent]) -> None:
    """Every request answered 200 or not at all (a cut connection, which the vendor retries:
    nothing was claimed stored); never an error status."""
    answers = Answers.of(sent)
    assert set(answers.statuses) <= {200, None}, str(answers)


def spooled(figures: dict[str, float]) -> float:
    return figures.get('bridge_notifications_total{outcome="spooled",type="call"}', 0)


def busiest_leader(kafka: KafkaCluster, topic: str) -> int:
    """The broker leading the partitions that carry the most of the load's cases."""
    count = len(kafka.partitions(topic))
    cases = Counter((murmur2(case_key(case)) & 0x7FFFFFFF) % count for case in range(CASES))
    leaders = {s.partition: s.leader for s in kafka.partitions(topic)}
    by_leader: Counter[int] = Counter()
    for partition, n in cases.items():
        by_leader[leaders[partition]] += n
    return by_leader.most_common(1)[0][0]


async def test_1_sigkill_of_the_busiest_leader_loses_nothing_keeps_order_answers_in_10s(
    bridge: BridgeProcess, cluster: KafkaCluster
) -> None:
    topic = bridge.topic
    victim = cluster.node(busiest_leader(cluster, topic))
    async with Load(bridge.url, cases=CASES, rate=RATE) as load:
        await settle(load, 5)
        victim.kill()
        killed = time.monotonic()
        moved = await asyncio.to_thread(
            _waited,
            "leaders moved",
            leaderless(cluster, topic, victim.node_id),
            60,
            cluster.log_paths,
        )
        await settle(load, 3)
        await asyncio.to_thread(relaunch, cluster)
        back = await asyncio.to_thread(
            _waited,
            "replicas back in sync",
            fully_replicated(cluster, topic),
            120,
            cluster.log_paths,
        )
        await settle(load, 3)
        during = len(load.since(killed))
    sent, landed, _ = await finish(load, bridge, cluster, "leader SIGKILL")
    logger.info(
        "leaders moved %.1f s after the kill; back in sync %.1f s after restart", moved, back
    )
    assert during > 0
    assert_kept(sent, landed)
    assert_all_answered_200_in_time(sent)


async def test_2_two_of_three_brokers_down_for_30s_spooled_answered_200_then_drained(
    bridge: BridgeProcess, cluster: KafkaCluster
) -> None:
    survivor, *down = cluster.brokers
    async with Load(bridge.url, cases=CASES, rate=RATE) as load:
        await settle(load, 5)
        for node in down:
            node.kill()
        killed = time.monotonic()
        below = await asyncio.to_thread(
            _waited,
            "every partition below min.insync.replicas=2",
            under_replicated(cluster, bridge.topic, below=2),
            OUTAGE,
            cluster.log_paths,
        )
        await asyncio.sleep(OUTAGE - (time.monotonic() - killed))
        spooled_while_down = spooled(await scrape(bridge.base_url))
        await asyncio.to_thread(relaunch, cluster)
        back = time.monotonic()
        drained = await bridge.drained(timeout=120)
        await settle(load, 3)
        during = len([s for s in load.since(killed) if s.answered < back])
    sent, landed, _ = await finish(load, bridge, cluster, "two of three brokers down")
    logger.info(
        "brokers %s killed (%s survived), every ISR below 2 after %.1f s, back %.1f s after "
        "the kill, spool empty %.1f s later; %d NotEnoughReplicas retries in the bridge log",
        [node.node_id for node in down],
        survivor.node_id,
        below,
        back - killed,
        drained,
        bridge.log.read_text().count("NotEnoughReplicasError"),
    )
    assert during > 0
    assert spooled_while_down > 0, "nothing was spooled: the outage did not happen"
    assert_kept(sent, landed)
    assert_all_answered_200_in_time(sent)


async def test_3_a_rolling_restart_loses_nothing_and_answers_no_error(
    bridge: BridgeProcess, cluster: KafkaCluster
) -> None:
    async with Load(bridge.url, cases=CASES, rate=RATE) as load:
        await settle(load, 5)
        started = time.monotonic()
        for node in cluster.brokers:
            await asyncio.to_thread(node.stop, 60)  # a clean shutdown: leadership moves first
            await asyncio.to_thread(relaunch, cluster)
            await asyncio.to_thread(
                _waited,
                f"broker {node.node_id} back in sync",
                fully_replicated(cluster, bridge.topic),
                120,
                cluster.log_paths,
            )
        rolled = time.monotonic() - started
        await settle(load, 3)
    sent, landed, _ = await finish(load, bridge, cluster, "rolling restart")
    logger.info("three brokers restarted one after another in %.1f s", rolled)
    assert_kept(sent, landed)
    assert_all_answered_200_in_time(sent)


async def test_4_the_whole_cluster_down_for_30s_loses_nothing_and_keeps_order(
    bridge: BridgeProcess, cluster: KafkaCluster
) -> None:
    async with Load(bridge.url, cases=CASES, rate=RATE) as load:
        await settle(load, 5)
        for node in [*cluster.brokers, cluster.controller]:
            node.kill()
        killed = time.monotonic()
        await asyncio.sleep(OUTAGE)
        spooled_while_down = spooled(await scrape(bridge.base_url))
        await asyncio.to_thread(relaunch, cluster)
        back = time.monotonic()
        drained = await bridge.drained(timeout=120)
        await settle(load, 3)
    sent, landed, _ = await finish(load, bridge, cluster, "whole cluster down")
    logger.info(
        "cluster back %.1f s after the kill; spool empty %.1f s later; producer renewed %d times",
        back - killed,
        drained,
        bridge.log.read_text().count("Kafka producer renewed"),
    )
    assert spooled_while_down > 0, "nothing was spooled: the outage did not happen"
    assert_kept(sent, landed)
    assert_no_error_answered(sent)


async def test_5_sigkill_of_the_single_broker_restarted_on_its_log_dirs_loses_nothing(
    lone_bridge: BridgeProcess, single: KafkaCluster
) -> None:
    (node,) = single.brokers
    async with Load(lone_bridge.url, cases=CASES, rate=RATE) as load:
        await settle(load, 5)
        node.kill()
        killed = time.monotonic()
        await asyncio.sleep(5)
        spooled_while_down = spooled(await scrape(lone_bridge.base_url))
        await asyncio.to_thread(relaunch, single)  # on the same log directories
        back = time.monotonic()
        drained = await lone_bridge.drained(timeout=120)
        await settle(load, 3)
    sent, landed, _ = await finish(load, lone_bridge, single, "single broker SIGKILL")
    logger.info(
        "broker back %.1f s after the kill; spool empty %.1f s later", back - killed, drained
    )
    assert spooled_while_down > 0, "nothing was spooled: the kill did not happen"
    assert_kept(sent, landed)
    assert_no_error_answered(sent)
