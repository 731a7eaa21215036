"""Logging: JSON lines when not on a terminal (for collectors), readable text on one.

One canonical line per notification (logger `bridge.notification`) carries its facts as
fields: outcome, type, case_id, event_id, topic, partition, offset, reason, latency_ms,
request_id. Never a body, never a token (bridge logs no paths).
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, Final

import orjson

from bridge.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Fields of a record that are Python's own, not ours.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
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


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting and writing leave the event
    loop (a line per notification is a noticeable share of the request's time). The queue is
    bounded: when the writer cannot keep up, lines are dropped and counted, memory is not."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _Enqueue.dropped += 1


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


_listener: logging.handlers.QueueListener | None = None
QUEUE_SIZE: Final = 10_000


@atexit.register
def stop_writer() -> None:
    """Write what is queued and stop the writer thread (also at exit)."""
    global _listener  # noqa: PLW0603
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(settings: Settings, *, json: bool | None = None) -> None:
    """Logging of this process: root to the writer thread, at BRIDGE_LOG_LEVEL."""
    root = logging.getLogger()
    root.handlers[:] = [writer_handler(json)]
    root.setLevel(settings.log_level.upper())
    _quiet(root.level)


def dict_config(settings: Settings) -> dict[str, Any]:
    """The same, as `logging.config.dictConfig` wants it: uvicorn applies it in each worker
    process it starts (BRIDGE_WORKERS > 1)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"bridge": {"()": "bridge.logs.writer_handler"}},
        "root": {"handlers": ["bridge"], "level": settings.log_level.upper()},
        "loggers": {"aiokafka": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
    }


def writer_handler(json: bool | None = None) -> logging.Handler:
    """A handler that queues records for this process's writer thread (started here)."""
    global _listener  # noqa: PLW0603 - one writer thread per process
    handler = logging.StreamHandler(sys.stderr)
    as_json = not sys.stderr.isatty() if json is None else json
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s  %(message)s")
    )
    stop_writer()
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=QUEUE_SIZE)
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    enqueue = _Enqueue(records)
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
