"""Logging: JSON lines when not on a terminal (for collectors), readable text on one.

One canonical line per notification (logger `bridge.notification`) carries its facts as
fields: outcome, type, case_id, event_id, topic, partition, offset, reason, latency_ms,
request_id. Never a body, never a token (bridge logs no paths).
"""

from __future__ import annotations

import collections
import contextvars
import functools
import logging
import sys
import threading
import time
from typing import Any, Final, TypeAlias

import orjson

from bridge.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def timestamp(when: float) -> str:
    """RFC 3339, UTC, milliseconds: the time of a log line, and the form of the `received-at`
    header (`notifications.routing`). The same text as
    `datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")` (microseconds
    rounded, then milliseconds cut), with the seconds part formatted once per second."""
    whole = int(when)  # `when - whole` is exact, as `math.modf`'s fraction
    micros = round((when - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return _second(whole) + _MILLISECONDS[micros // 1000]


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


# ".000Z" to ".999Z": a look-up costs a tenth of formatting the number each time.
_MILLISECONDS: Final = tuple(f".{n:03d}Z" for n in range(1000))


# Fields of a record that are Python's own, not ours.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


# The canonical line of one notification as the writer thread is handed it by
# `log_notification`: when it was logged, the logger's name, the request id, then its fields.
_Notification: TypeAlias = tuple[
    float, str, str, str, str, str | None, str, str, int | None, int | None, str | None, float
]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": timestamp(record.created),  # UTC, as the received-at header
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(
            (k, v) for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"
        )
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"
        ]
        return line + ("  " + " ".join(fields) if fields else "")


class StampRequestId(logging.Filter):
    """Copies the request id of the current task onto the record, where a formatter in another
    thread can still read it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (rid := request_id.get()) != "-":
            record.request_id = rid
        return True


class _Writer(threading.Thread):
    """Writes this process's log lines off the event loop, in batches: a line per
    notification would otherwise cost the request its formatting, a thread wake-up and a
    write. Records wait in a bounded deque (appending takes no lock); the thread writes what
    has gathered every `interval`, at once for a warning or worse. When it cannot keep up,
    lines are dropped and counted, memory is not."""

    def __init__(self, handler: logging.Handler, limit: int, interval: float = 0.05) -> None:
        super().__init__(name="bridge-log-writer", daemon=True)
        self.handler, self.limit, self.interval = handler, limit, interval
        self.dropped = 0
        self.records: collections.deque[logging.LogRecord | _Notification] = collections.deque()
        self.wake = threading.Event()
        self.stopping = False

    def put(self, record: logging.LogRecord) -> None:
        """Queue a record; a warning or worse wakes the writer at once."""
        if self.queue(record) and record.levelno >= logging.WARNING:
            self.wake.set()

    def queue(self, line: logging.LogRecord | _Notification) -> bool:
        """Queue a record or a notification's line (info: written with the next batch); False
        when the queue is full and it was dropped (counted)."""
        if len(self.records) >= self.limit:
            self.dropped += 1
            return False
        self.records.append(line)
        return True

    def run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.write_waiting()
        self.write_waiting()

    def write_waiting(self) -> None:
        # Bytes, decoded once per batch rather than once per notification's JSON line;
        # "surrogatepass" gives any text line back exactly as `format` made it.
        lines: list[bytes] = []
        records, handler = self.records, self.handler
        level = logging.getLevelName(logging.INFO).lower()
        while records:
            record = records.popleft()
            try:
                if isinstance(record, tuple):
                    lines.append(_notification_json(record, level))
                else:
                    lines.append(handler.format(record).encode(errors="surrogatepass"))
            except Exception:  # noqa: BLE001 - logging's own way: report, carry on
                handler.handleError(
                    record
                    if isinstance(record, logging.LogRecord)
                    else logging.makeLogRecord({"msg": "log line failed"})
                )
        if lines and isinstance(handler, logging.StreamHandler):
            try:
                handler.stream.write(b"\n".join(lines).decode(errors="surrogatepass") + "\n")
                handler.flush()
            except Exception:  # noqa: BLE001
                handler.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.join(5)


class _Enqueue(logging.Handler):
    """Hands records, as they are, to its writer thread; closing it (as `logging.shutdown`
    does at exit, and `dictConfig` or `configure_logging` for the handlers they replace)
    writes what is queued and stops the thread."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:  # no lock: the deque is enough
        if not self.filter(record):
            return False
        self.writer.put(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.put(record)

    def close(self) -> None:
        if self.writer.is_alive():
            self.writer.stop()
        super().close()


class Throttle(logging.Filter):
    """Lets one copy of a repeated message (at `level` or above) through per interval: a Kafka
    outage makes aiokafka log the same error many times a second, an overload or a guessing
    client would make bridge log a refusal per request (the metrics count them all)."""

    def __init__(self, interval: float = 10.0, level: int = logging.NOTSET) -> None:
        super().__init__()
        self.interval = interval
        self.level = level
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        self._last[key] = now
        if len(self._last) > 1000:
            self._last.clear()
        return True


def log_notification(  # noqa: PLR0913 - the line's fields, by name
    logger: logging.Logger,
    *,
    outcome: str,
    kind: str,
    case_id: str | None,
    event_id: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    reason: str | None,
    latency_ms: float,
) -> None:
    """`logger.info("notification %s", outcome, extra={"outcome": ..., "type": kind, ...})`,
    the canonical line of one notification, at a fraction of its cost when bridge's writer
    (writing JSON) is the only handler it would reach: no record is made nor passed through
    `Logger` and its handlers; the writer thread is handed a tuple and writes from it the
    same JSON document the record would have made. Anywhere else (caplog, a handler of the
    user's, text on a terminal) it is that call, made here."""
    if not logger.isEnabledFor(logging.INFO):  # the logger's level, cached by logging
        return
    writer = _sole_json_writer(logger)
    if writer is None:
        logger.info(
            "notification %s",
            outcome,
            extra={
                "outcome": outcome,
                "type": kind,
                "case_id": case_id,
                "event_id": event_id,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "reason": reason,
                "latency_ms": latency_ms,
            },
            stacklevel=2,  # the caller's line, as if it had called `logger.info` itself
        )
        return
    writer.queue(
        (
            time.time(),  # as a record's `created`
            logger.name,
            request_id.get(),
            outcome,
            kind,
            case_id,
            event_id,
            topic,
            partition,
            offset,
            reason,
            latency_ms,
        )
    )


def _sole_json_writer(logger: logging.Logger) -> _Writer | None:
    """The writer of bridge's handler when an info record of `logger` would reach that
    handler and no other, pass only filters known to let it through unchanged, and be
    formatted as JSON; checked on every call (plain attribute reads, no state kept here), so a
    handler or filter added at any time (caplog's, a user's) is honoured at once."""
    for check in logger.filters:  # bridge's own: a Throttle of warnings only
        if type(check) is not Throttle or check.level <= logging.INFO:
            return None
    found: logging.Handler | None = None
    node: logging.Logger | None = logger
    while node is not None:  # Logger.callHandlers' walk: any handler but one is another's
        handlers = node.handlers
        if handlers:
            if found is not None or len(handlers) != 1:
                return None
            found = handlers[0]
        node = node.parent if node.propagate else None
    if type(found) is not _Enqueue or found.level > logging.INFO:
        return None
    for check in found.filters:
        if type(check) is not StampRequestId:
            return None
    writer = found.writer
    return writer if type(writer.handler.formatter) is JsonFormatter else None


def _notification_json(line: _Notification, level: str) -> bytes:
    """What `JsonFormatter` makes of the record `log_notification` would have logged (keys
    in the same order: the record's, then the request id its filter stamps)."""
    document: dict[str, Any] = {
        "time": timestamp(line[0]),
        "level": level,
        "logger": line[1],
        "message": f"notification {line[3]}",
        "outcome": line[3],
        "type": line[4],
        "case_id": line[5],
        "event_id": line[6],
        "topic": line[7],
        "partition": line[8],
        "offset": line[9],
        "reason": line[10],
        "latency_ms": line[11],
    }
    if line[2] != "-":
        document["request_id"] = line[2]
    return orjson.dumps(document, default=str)


QUEUE_SIZE: Final = 10_000


def configure_logging(settings: Settings, *, json: bool | None = None) -> None:
    """Logging of this process: root to the writer thread, at BRIDGE_LOG_LEVEL."""
    root = logging.getLogger()
    for replaced in root.handlers:  # one writer thread per process: the previous one stops
        replaced.close()
    root.handlers[:] = [writer_handler(json)]
    root.setLevel(settings.log_level.upper())
    _quiet(root.level)


def dict_config(settings: Settings) -> dict[str, Any]:
    """The same, as `logging.config.dictConfig` wants it: uvicorn applies it in each worker
    process it starts (BRIDGE_WORKERS > 1)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"bridge": {"()": "bridge.telemetry.logs.writer_handler"}},
        "root": {"handlers": ["bridge"], "level": settings.log_level.upper()},
        "loggers": {"aiokafka": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
    }


def writer_handler(json: bool | None = None) -> logging.Handler:
    """A handler that queues records for a writer thread of its own (started here)."""
    # Fields our formatters never show, each a cost on every record (the logging HOWTO's
    # "Optimization" section): the caller's source line, thread, process (a system call).
    logging._srcfile = None  # noqa: SLF001 - documented as the way to skip findCaller
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    as_json = not sys.stderr.isatty() if json is None else json
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s  %(message)s")
    )
    writer = _Writer(handler, QUEUE_SIZE)
    writer.start()
    enqueue = _Enqueue(writer)
    enqueue.addFilter(StampRequestId())
    _quiet(logging.WARNING)
    return enqueue


def _quiet(level: int) -> None:
    kafka = logging.getLogger("aiokafka")
    kafka.setLevel(max(logging.WARNING, level))
    kafka.filters[:] = [Throttle()]
    # httpx logs each registry request at info: not a line per request worth keeping.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level))
    logging.getLogger("bridge.notification").filters[:] = [Throttle(level=logging.WARNING)]
