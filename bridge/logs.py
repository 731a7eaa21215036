"""Logging: JSON lines when not on a terminal (for collectors), readable text on one.

One canonical line per notification (logger `bridge.notification`) carries its facts as
fields: outcome, type, case_id, event_id, topic, partition, offset, reason, latency_ms,
request_id. Never a body, never a token (bridge logs no paths).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, Final

import orjson

from bridge.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Fields of a record that are Python's own, not ours.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.get()) != "-":
            document["request_id"] = rid
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
        if (rid := request_id.get()) != "-":
            fields.append(f"request_id={rid}")
        return line + ("  " + " ".join(fields) if fields else "")


class Throttle(logging.Filter):
    """Lets one copy of a repeated message through per interval: a Kafka outage makes aiokafka
    log the same connection error many times a second."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        self._last[key] = now
        if len(self._last) > 1000:
            self._last.clear()
        return True


def configure_logging(settings: Settings, *, json: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    as_json = not sys.stderr.isatty() if json is None else json
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s  %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    kafka = logging.getLogger("aiokafka")
    kafka.setLevel(max(logging.WARNING, root.level))
    kafka.addFilter(Throttle())
