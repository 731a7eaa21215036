"""The HTTP protocol bridge serves with: uvicorn's httptools protocol, with a deadline on each
phase of a connection and a bound on what one client may hold.

uvicorn bounds only the idle time between two requests. A client that sent its headers slowly
(or nothing at all) kept its connection for ever, one that sent megabytes of headers had them
buffered whole (httptools keeps a header until it ends), and after an early answer (404, 408,
413, ...) the connection went on reading. Here, per connection:

- the request line and headers end within `header_timeout` of the connection (or of a later
  request's first byte) and within `max_header_bytes`; else 408 or 431 and the connection is
  closed without reading the rest;
- the body ends within the body deadline (the webhook answers 408 itself; this closes the
  connection of a request whose app did not);
- an answer sent before the request's body has arrived to its end (404, 405, 408, 413, 429,
  ...) closes the connection (`Connection: close`, then the transport): what the client still
  sends is never read;
- a new connection beyond `max_per_address` from its address, or beyond `max_connections`,
  takes the place of the oldest connection (of that address, or of any) that holds no request
  (waiting for its headers, or idle); when every one holds a request, the new one is closed.
  So strangers that never finish their headers cannot keep the vendor out: its new connection
  is always the youngest, and one address cannot take the places of the others.

What this costs a request is measured by `make bench` against uvicorn's protocol: hence one
override per chunk received and none per request; deadlines kept by one sweep per server every
fraction of a second, not a timer per request; the answer watched only for a request whose
body is still coming when its first chunk has been read.

The limits and the counters are handed in by `protocol_for`, once per server: the protocol
reads nothing of the app's (each worker builds its own server, app and metrics).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import Counter, Gauge
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bridge.settings import Settings

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    from uvicorn.server import ServerState


# Why bridge closed a connection: the label of bridge_connections_closed_total.
HEADER_TIMEOUT = "header_timeout"
HEADER_TOO_LARGE = "header_too_large"
BODY_TIMEOUT = "body_timeout"
BODY_TOO_LARGE = "body_too_large"
IDLE_TIMEOUT = "idle_timeout"
ADDRESS_LIMIT = "address_limit"
CONNECTION_LIMIT = "connection_limit"
EARLY_ANSWER = "early_answer"  # any other answer sent before the body had arrived
BAD_REQUEST = "bad_request"  # not HTTP (uvicorn's own 400)
REASONS = (
    HEADER_TIMEOUT,
    HEADER_TOO_LARGE,
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    IDLE_TIMEOUT,
    ADDRESS_LIMIT,
    CONNECTION_LIMIT,
    EARLY_ANSWER,
    BAD_REQUEST,
)
_BY_STATUS: Final = {408: BODY_TIMEOUT, 413: BODY_TOO_LARGE}
# The webhook's own 408 comes first; this only closes a connection whose app gave none.
BODY_GRACE = 1.0
_NEVER = math.inf


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int
    max_per_address: int  # 0: none

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout + BODY_GRACE,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
        )

    @property
    def sweep_every(self) -> float:
        """How often deadlines are checked: a deadline is kept to within this."""
        return min(0.25, self.header_timeout / 4, self.body_timeout / 4)


def _answer(status: int, text: str) -> bytes:
    body = text.encode()
    head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    return STATUS_LINE[status] + head + b"content-length: %d\r\n\r\n" % len(body) + body


_TOO_LARGE = _answer(431, "Request Header Fields Too Large")
_TIMEOUT = _answer(408, "Request Timeout")


class ConnectionMetrics(Protocol):
    """What the doors count into (`telemetry.metrics.Metrics` has both): a narrow view, so this
    module needs no import of the metrics module, nor that one of the reasons here."""

    connections_closed: Counter
    connections: Gauge


class Doors:
    """Every connection of one server, oldest first (the first to give way), and how many
    from each address."""

    def __init__(self, limits: Limits, metrics: ConnectionMetrics | None = None) -> None:
        self.limits = limits
        self.open: dict[BridgeProtocol, None] = {}
        self.by_address: dict[str, dict[BridgeProtocol, None]] = {}
        self._closed = None if metrics is None else metrics.connections_closed
        self._gauge = None if metrics is None else metrics.connections
        self._sweeping: asyncio.TimerHandle | None = None
        if self._closed is not None:
            for reason in REASONS:  # each shown from the start, at 0
                self._closed.labels(reason)

    def enter(self, connection: BridgeProtocol) -> str | None:
        """Admit a new connection, making room for it; the reason when there is none."""
        limits = self.limits
        mine = self.by_address.get(connection.address, {})
        if limits.max_per_address and len(mine) >= limits.max_per_address:
            victim = next((c for c in mine if c.holds_nothing), None)
            if victim is None:
                return ADDRESS_LIMIT
            victim.drop(ADDRESS_LIMIT)
        if len(self.open) >= limits.max_connections:
            victim = next((c for c in self.open if c.holds_nothing), None)
            if victim is None:
                return CONNECTION_LIMIT
            victim.drop(CONNECTION_LIMIT)
        self.open[connection] = None
        self.by_address.setdefault(connection.address, {})[connection] = None
        if self._gauge is not None:
            self._gauge.inc()
        if self._sweeping is None:
            self._sweeping = connection.loop.call_later(limits.sweep_every, self._sweep)
        return None

    def leave(self, connection: BridgeProtocol) -> None:
        if self.open.pop(connection, 0) is None:  # it was in (leaving twice is a no-op)
            mine = self.by_address[connection.address]
            del mine[connection]
            if not mine:
                del self.by_address[connection.address]
            if self._gauge is not None:
                self._gauge.dec()

    def closed(self, reason: str) -> None:
        if self._closed is not None:
            self._closed.labels(reason).inc()

    def _sweep(self) -> None:
        if not self.open:
            self._sweeping = None
            return
        any_open = next(iter(self.open))
        now = any_open.loop.time()
        for connection in [c for c in self.open if c.due <= now]:
            connection.expire()
        self._sweeping = any_open.loop.call_later(self.limits.sweep_every, self._sweep)


def protocol_for(
    limits: Limits, metrics: ConnectionMetrics | None = None
) -> Callable[..., BridgeProtocol]:
    """What uvicorn builds each connection of one server with (its `http`): every connection
    of the server shares one `Doors`, with these limits and counters."""
    return functools.partial(BridgeProtocol, doors=Doors(limits, metrics))


class BridgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        doors: Doors,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.doors = doors
        self.address = ""
        self.due = _NEVER  # when the current phase must be over (loop time)
        self._head_bytes = 0  # of the request line and headers being read
        self._reason: str | None = None  # why bridge closes this connection

    @property
    def holds_nothing(self) -> bool:
        """No request being received or answered: waiting for headers, or idle."""
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.address = self.client[0] if self.client else ""
        refused = self.doors.enter(self)
        if refused is not None:
            self.drop(refused)
            return
        self.due = self.loop.time() + self.doors.limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.doors.leave(self)
        if self._reason is not None:
            self.doors.closed(self._reason)

    def drop(self, reason: str) -> None:
        """Close the connection now, for `reason`."""
        self._reason = self._reason or reason
        self.doors.leave(self)
        self.transport.close()

    def expire(self) -> None:
        """The deadline in `due` has passed: what it was for depends on where the connection
        is now."""
        self.due = _NEVER
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if cycle is None or self._head_bytes:  # headers not done in time
                if self._head_bytes:  # a request began: say why it ends
                    self.transport.write(_TIMEOUT)
                self.drop(HEADER_TIMEOUT)
        elif cycle.more_body:
            self.drop(BODY_TIMEOUT)
        elif self._head_bytes:
            # A pipelined request trickles its headers while the one before is answered: that
            # answer goes out, then the connection closes.
            self._reason = HEADER_TIMEOUT
            cycle.keep_alive = False

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body:  # reading a request line and headers
            if not self._head_bytes and cycle is not None:  # a later request begins
                self.due = self.loop.time() + self.doors.limits.header_timeout
            room = self.doors.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # Feed what the limit allows: the headers end in it, or 431 without the rest.
                self._head_bytes += room
                super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self.cycle is cycle:
                    self.transport.write(_TOO_LARGE)
                    self.drop(HEADER_TOO_LARGE)
                    return
                self._began(self.cycle)
                self.data_received(data[room:])  # the body, or the next request's head
                return
            self._head_bytes += len(data)
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers ended in this chunk
            self._began(self.cycle)

    def _began(self, cycle: RequestResponseCycle) -> None:
        """The headers of the request `cycle` have been read, and whatever of its body came
        with them; its app has not run yet."""
        self._head_bytes = 0
        if not cycle.more_body:  # all of it: the app's own time is its own
            self.due = _NEVER
            return
        self.due = self.loop.time() + self.doors.limits.body_timeout
        send = cycle.send

        async def answer(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and cycle.more_body and cycle.keep_alive:
                # Answered before the body ended: uvicorn then sends `Connection: close` and
                # closes after the answer, the rest unread.
                cycle.keep_alive = False
                self._reason = self._reason or _BY_STATUS.get(message["status"], EARLY_ANSWER)
            await send(message)

        cycle.send = answer  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        self._reason = BAD_REQUEST
        super().send_400_response(msg)

    def timeout_keep_alive_handler(self) -> None:
        self._reason = self._reason or IDLE_TIMEOUT
        super().timeout_keep_alive_handler()
