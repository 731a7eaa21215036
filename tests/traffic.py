"""Steady webhook load on loopback, and what Kafka holds afterwards, counted by event id.

For the fault tests, whatever the broker: `Load` posts notifications for a number of cases at
a steady rate (each case one request after another, as the vendor does) until it is stopped or
its time bound runs out, and keeps every answer with its time; `read_back` reads every record
of some topics into a `Landed` (counts by event id, each key's records in partition order);
`lost` and `order_broken` compare the two; `scrape` and `wait_drained` read the bridge's own
figures from `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

TEMPLATE: dict[str, Any] = orjson.loads(
    (Path(__file__).resolve().parent.parent / "examples" / "notifications" / "call.json")
    .read_bytes()
)  # fmt: skip


def case_key(case: int) -> bytes:
    """The Kafka key of a case: its case id."""
    return f"case-{case}".encode()


def notification(case: int, step: int) -> bytes:
    """A call notification of `case`, the `step`-th of its history (event id
    `call:case-<case>/<step>`)."""
    data = {**TEMPLATE, "callee": {**TEMPLATE["callee"], "case_id": f"case-{case}"}}
    data["call"] = {**TEMPLATE["call"], "call_id": f"case-{case}/{step}"}
    return orjson.dumps(data)


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
                response = await client.post(self.url, content=notification(case, step))
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

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        event_id = dict(record.headers)["event-id"].decode()
        self.counts[event_id] += 1
        self.order[record.key].append(event_id)  # records of a partition come in offset order
        self.partitions[record.key].add(TopicPartition(record.topic, record.partition))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


async def read_back(
    bootstrap_servers: str,
    topics: list[str],
    *,
    idle: float | None = None,
    timeout: float = 60.0,
) -> Landed:
    """Every record of `topics`, from the beginning up to the end offsets Kafka gives at the
    start; or, with `idle`, until nothing new came for that many seconds (for a broker whose
    end offsets cannot be trusted). Raises TimeoutError when that takes over `timeout`."""
    landed = Landed()
    # Subscribed without a group, the consumer is given every partition once its metadata
    # lists the topic (a broker just restarted may not list it at first).
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10000,
    )
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] | None = None
            last = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        landed.add(record)
                if batch:
                    last = time.monotonic()
                assigned = consumer.assignment()
                if {tp.topic for tp in assigned} != set(topics):
                    continue
                if idle is not None:
                    if time.monotonic() - last >= idle:
                        return landed
                elif ends is None:
                    ends = await consumer.end_offsets(list(assigned))
                elif all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    return landed
        finally:
            await consumer.stop()


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
