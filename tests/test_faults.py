"""Fault tests: the bridge as a process, Kafka behind a proxy the test cuts and restores.

Each test counts what was answered 2xx and what is in Kafka afterwards, by event id. Every
test is bounded in time and stops what it started; it waits by polling the bridge's spool
depth (its /metrics) with a deadline, never for a fixed time, except where the length of an
outage is what the test is about. They run on both brokers (the `broker` fixture).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from bridge.settings import Settings
from tests.helpers import Broker, notification, process_env
from tests.traffic import BridgeProcess, Landed, Load, Proxy, assert_kept

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g} s")
        await asyncio.sleep(0.05)


async def answered(load: Load, count: int, timeout: float = 30.0) -> None:
    """Until the load has had `count` answers of 200."""

    def enough() -> bool:
        return sum(1 for s in load.sent if s.status == 200) >= count

    await until(enough, f"{count} answers of 200", timeout)


async def landed(settings: Settings, broker: Broker) -> Landed:
    return Landed.of(await broker.consume([f"{settings.topic_prefix}call"], idle=2.0))


@pytest.fixture
def bridge_env(kafka_settings: Settings, proxy: Proxy) -> dict[str, str]:
    return process_env(
        kafka_settings,
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=proxy.bootstrap_servers,  # through the proxy
        BRIDGE_LOG_LEVEL="info",
        BRIDGE_AUTH_TOKENS="fault-token",
    )


@pytest.fixture
def bridge(bridge_env: dict[str, str], tmp_path: Path) -> Iterator[BridgeProcess]:
    process = BridgeProcess(bridge_env, tmp_path / "bridge.log")
    yield process
    process.kill()


async def test_1_broker_unreachable_for_30s_loses_nothing_and_keeps_order(
    bridge: BridgeProcess, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    began = time.monotonic()
    async with Load(bridge.url, cases=20, rate=20, limit=60, timeout=15) as load:
        await answered(load, 40)
        proxy.stop()
        await asyncio.sleep(30)  # the outage itself
        proxy.start()
        await answered(load, len(load.sent) + 100)  # served on while the spool drains
        sent = await load.stop()
    seconds = time.monotonic() - began
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert_kept(sent, kafka)
    assert max(s.seconds for s in sent) < 10
    assert all(s.status == 200 for s in sent), Counter(s.status for s in sent)
    assert len(sent) > 0.8 * 20 * seconds  # at its rate throughout: nothing held it back


async def test_2_sigkill_under_load_then_restart_on_the_same_spool_loses_nothing(
    bridge: BridgeProcess, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    async with Load(bridge.url, cases=10, rate=50, limit=8, timeout=15) as load:
        await answered(load, 20)
        proxy.stop()  # so that the spool holds entries when the process dies
        await bridge.spool_holds(50)
        bridge.signal(signal.SIGKILL)
        bridge.wait(5)
        await until(lambda: any(s.status is None for s in load.sent), "a request cut")
        sent = await load.stop()
    proxy.start()
    bridge.start()
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert sum(1 for s in sent if s.status is None) > 0  # the kill did cut requests
    assert_kept(sent, kafka)


async def test_3_sigterm_with_the_broker_unreachable_exits_in_15s_and_loses_nothing(
    bridge: BridgeProcess, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    proxy.stop()
    async with Load(bridge.url, cases=10, rate=30, limit=6, timeout=15) as load:
        await bridge.spool_holds(30)
        started = time.monotonic()
        bridge.signal(signal.SIGTERM)
        code = await asyncio.to_thread(bridge.wait, 20)
        elapsed = time.monotonic() - started
        sent = await load.stop()
    assert code == 0
    assert elapsed < 15
    proxy.start()
    bridge.start()
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert_kept(sent, kafka)


async def test_4_the_vendors_retries_leave_no_duplicates_even_across_a_restart(
    bridge: BridgeProcess, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    times = {case: 1 + case % 6 for case in range(30)}  # each sent 1 to 6 times
    async with httpx2.AsyncClient(timeout=15) as client:
        for attempt in range(6):
            if attempt == 3:  # the window survives a restart
                assert await asyncio.to_thread(bridge.terminate) == 0
                bridge.start()
            for case, count in times.items():
                if attempt < count:
                    body = notification(f"case-{case}", 0)
                    response = await client.post(bridge.url, content=body)
                    assert response.status_code == 200
    kafka = await landed(kafka_settings, broker)
    assert kafka.counts == Counter({f"call:case-{case}/0": 1 for case in times})


async def test_5_a_full_spool_answers_503_with_retry_after_and_loses_nothing(
    bridge_env: dict[str, str],
    proxy: Proxy,
    kafka_settings: Settings,
    broker: Broker,
    tmp_path: Path,
) -> None:
    bridge_env["BRIDGE_SPOOL_MAX_BYTES"] = str(1024 * 1024)  # about 200 notifications
    process = BridgeProcess(bridge_env, tmp_path / "bridge.log")
    try:
        process.start()
        proxy.stop()
        # Until the spool is full and refuses some (a loaded machine answers fewer per second).
        async with Load(process.url, cases=10, rate=100, limit=60, timeout=15) as load:
            while sum(1 for s in load.sent if s.status == 503) < 10 and not load.finished:
                await asyncio.sleep(0.05)
            sent = await load.stop()
        refused = [s for s in sent if s.status == 503]
        assert refused, Counter(s.status for s in sent)
        assert {s.retry_after for s in refused} == {"60"}
        assert 100 < sum(1 for s in sent if s.status == 200) < 300
        proxy.start()
        await process.drained()
        kafka = await landed(kafka_settings, broker)
        assert_kept(sent, kafka)
    finally:
        process.kill()


async def test_6_a_damaged_spool_file_at_start_is_reported_and_the_rest_kept(
    bridge: BridgeProcess, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    proxy.stop()
    async with Load(bridge.url, cases=10, rate=40, limit=3, timeout=15) as load:
        sent = await load.done()
    assert await asyncio.to_thread(bridge.terminate) == 0
    assert kafka_settings.spool_dir is not None
    spool_file = kafka_settings.spool_dir / "spool-0.sqlite3"
    with sqlite3.connect(spool_file) as db:
        waiting = db.execute("SELECT count(*) FROM spool").fetchone()[0]
    assert waiting == sum(1 for s in sent if s.status == 200)
    size = spool_file.stat().st_size
    with spool_file.open("r+b") as file:
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xde\xad\xbe\xef" * 1024)

    proxy.start()
    bridge.start()
    async with httpx2.AsyncClient(timeout=15) as client:  # it serves
        response = await client.post(bridge.url, content=notification("case-99", 0))
        assert response.status_code == 200
    await bridge.drained()
    log = bridge.log.read_text()
    assert "is damaged" in log
    assert "entries kept" in log
    kept = int(log.split("entries kept")[0].rsplit(":", 1)[1].strip().split()[0])
    kafka = await landed(kafka_settings, broker)
    assert 0 < kept < waiting
    assert len(kafka.counts) == kept + 1
    assert kafka.counts["call:case-99/0"] == 1
