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
import math
import sys
import threading
import time
from typing import Any, Final

import orjson

from bridge.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def timestamp(when: float) -> str:
    """RFC 3339, UTC, milliseconds: the time of a log line, and the form of the `received-at`
    header (`notifications.routing`). The same text as
    `datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")` (microseconds
    rounded, then milliseconds cut), with the seconds part formatted once per second."""
    fraction, whole = math.modf(when)
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(int(whole))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


# Fields of a record that are Python's own, not ours.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


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
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.wake = threading.Event()
        self.stopping = False

    def put(self, record: logging.LogRecord) -> None:
        if len(self.records) >= self.limit:
            self.dropped += 1
            return
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.wake.set()

    def run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.write_waiting()
        self.write_waiting()

    def write_waiting(self) -> None:
        lines = []
        records, handler = self.records, self.handler
        while records:
            record = records.popleft()
            try:
                lines.append(handler.format(record))
            except Exception:  # noqa: BLE001 - logging's own way: report, carry on
                handler.handleError(record)
        if lines and isinstance(handler, logging.StreamHandler):
            try:
                handler.stream.write("\n".join(lines) + "\n")
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
