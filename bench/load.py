"""A lean HTTP/1.1 load generator on asyncio (uvloop): keep-alive connections, every request
counted (none dropped from the percentiles for being slow), closed or open loop."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Result:
    seconds: float
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0  # connection errors

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.failures + sum(n for s, n in self.statuses.items() if not 200 <= s < 300)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def max(self) -> float:
        return max(self.latencies, default=float("nan"))


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, _: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15 : line_end if line_end > 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(status)

    async def request(self, payload: bytes) -> int:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


async def run(  # noqa: C901, PLR0913 - one loop, its knobs spelled out
    host: str,
    port: int,
    path: str,
    bodies: Iterator[bytes],
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    rate: float | None = None,
    mark: Callable[[], None] | None = None,
) -> Result:
    """Load for `warmup` + `seconds`; measure the last `seconds`. With `rate`, open loop: each
    request is due at its time and its latency counts from then (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    result = Result(seconds)
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    if mark is not None:  # called when the measured time begins
        loop.call_at(measure_from, mark)
    prefix = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"

    def payload() -> bytes:
        body = next(bodies)
        return (prefix + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def connect() -> _Connection:
        _, connection = await loop.create_connection(_Connection, host, port)
        return connection

    async def worker(index: int) -> None:
        connection = await connect()
        interval = concurrency / rate if rate else 0.0
        due = start + (index * interval / concurrency if rate else 0.0)
        while True:
            if rate:
                due += interval
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                began = due
            else:
                began = loop.time()
            if began >= stop_at:
                return
            try:
                if connection.closed:
                    connection = await connect()
                status = await connection.request(payload())
            except (ConnectionError, OSError):
                status = 0
            finished = loop.time()
            if began >= measure_from:
                result.latencies.append(finished - began)
                if status:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                else:
                    result.failures += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = seconds
    return result


async def send(  # noqa: PLR0913 - the knobs of one run, spelled out
    host: str, port: int, path: str, bodies: Iterator[bytes], *, count: int, concurrency: int
) -> dict[int, int]:
    """Send `count` requests over `concurrency` connections; the statuses, counted."""
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}
    prefix = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"

    async def worker(share: int) -> None:
        _, connection = await loop.create_connection(_Connection, host, port)
        for _ in range(share):
            body = next(bodies)
            head = (prefix + f"Content-Length: {len(body)}\r\n\r\n").encode()
            status = await connection.request(head + body)
            statuses[status] = statuses.get(status, 0) + 1
        if connection.transport is not None:
            connection.transport.close()

    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares))
    return statuses


def summary(result: Result) -> dict[str, float]:
    return {
        "rps": result.rate,
        "p50_ms": result.percentile(50) * 1000,
        "p99_ms": result.percentile(99) * 1000,
        "max_ms": result.max * 1000,
        "errors": float(result.errors),
        "over_1s": float(sum(1 for x in result.latencies if x > 1.0)),
        "requests": float(result.requests),
    }


def timed(function: object) -> float:
    started = time.perf_counter()
    function()  # type: ignore[operator]
    return time.perf_counter() - started
