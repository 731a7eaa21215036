from __future__ import annotations

import logging
import sys
import time

import orjson
import pytest
from starlette.testclient import TestClient

from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
from bridge.telemetry.logs import (
    JsonFormatter,
    StampRequestId,
    TextFormatter,
    Throttle,
    configure_logging,
    request_id,
)
from tests.helpers import sample_bytes


def record(message: str = "notification stored", **fields: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "bridge.notification", "msg": message, "levelno": 20})
    made.levelname = "INFO"
    made.__dict__.update(fields)
    return made


def test_json_lines_carry_the_fields_and_the_request_id() -> None:
    made = record(case_id="12345.0", latency_ms=1.5)
    token = request_id.set("abc123")
    try:
        assert StampRequestId().filter(made)  # on the request's task
    finally:
        request_id.reset(token)
    line = JsonFormatter().format(made)  # later, in the writer thread
    document = orjson.loads(line)
    assert document["message"] == "notification stored"
    assert document["case_id"] == "12345.0"
    assert document["latency_ms"] == 1.5
    assert document["request_id"] == "abc123"
    assert document["level"] == "info"


def test_json_times_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Shanghai")  # eight hours east of UTC
    time.tzset()
    try:
        made = record()
        made.created, made.msecs = 1744699269.25, 250.0
        document = orjson.loads(JsonFormatter().format(made))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert document["time"] == "2025-04-15T06:41:09.250Z"


def test_text_lines_are_readable() -> None:
    line = TextFormatter("%(levelname)s %(message)s").format(record(case_id="7"))
    assert line == "INFO notification stored  case_id=7"


def test_repeated_messages_are_throttled() -> None:
    throttle = Throttle(interval=60)
    assert throttle.filter(record("Unable connect to node"))
    assert not throttle.filter(record("Unable connect to node"))
    assert throttle.filter(record("something else"))


def test_only_warnings_are_throttled_when_asked() -> None:
    throttle = Throttle(interval=60, level=logging.WARNING)
    assert throttle.filter(record("notification %s"))  # info: one line per notification
    assert throttle.filter(record("notification %s"))
    warning = record("notification rejected: %s")
    warning.levelno = logging.WARNING
    assert throttle.filter(warning)
    assert not throttle.filter(warning)


def test_the_queue_to_the_writer_is_bounded() -> None:
    from bridge.telemetry.logs import _Enqueue, _Writer  # noqa: PLC0415

    writer = _Writer(logging.StreamHandler(), limit=2)  # not started: nothing is written
    handler = _Enqueue(writer)
    for _ in range(5):
        handler.handle(record())
    assert len(writer.records) == 2
    assert writer.dropped == 3


def test_lines_are_written_in_batches_and_warnings_at_once(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from bridge.telemetry.logs import _Enqueue, _Writer  # noqa: PLC0415

    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    writer = _Writer(stream, limit=100, interval=60)  # on its own, it would wait a minute
    writer.start()
    try:
        handler = _Enqueue(writer)
        for n in range(3):
            handler.handle(record(f"line {n}"))
        time.sleep(0.2)
        assert capfd.readouterr().err == ""  # gathered, not yet written
        warning = record("trouble")
        warning.levelno, warning.levelname = logging.WARNING, "WARNING"
        handler.handle(warning)
        deadline = time.monotonic() + 5
        written = ""
        while written.count("\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
            written += capfd.readouterr().err
    finally:
        writer.stop()
    lines = [orjson.loads(x)["message"] for x in written.splitlines()]
    assert lines == ["line 0", "line 1", "line 2", "trouble"]


def test_one_line_per_notification_with_its_facts(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    app = create_app(load_settings(spool_dir=str(tmp_path)), MemoryPublisher())
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="bridge.notification"):
        response = client.post(
            WEBHOOK_PATH, content=sample_bytes(), headers={"X-Request-Id": "req-42"}
        )
    assert response.headers["x-request-id"] == "req-42"
    [line] = [r for r in caplog.records if r.name == "bridge.notification"]
    facts = {k: getattr(line, k) for k in ("outcome", "type", "case_id", "event_id", "topic")}
    assert facts == {
        "outcome": "stored",
        "type": "call",
        "case_id": "12345.0",
        "event_id": "call:817377d194xxxxxxxxc8ad463bc81d996a",
        "topic": "airudder.call",
    }
    assert line.__dict__["partition"] == 0  # the facts are the record's extra fields
    assert line.__dict__["offset"] == 0
    assert line.__dict__["latency_ms"] > 0


def test_lines_are_written_off_the_event_loop_with_their_request_id(
    capfd: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(load_settings(log_level="info"), json=True)
        token = request_id.set("req-7")
        logging.getLogger("bridge.notification").info("notification stored", extra={"case_id": "9"})
        request_id.reset(token)
        root.handlers[0].close()  # writes what is queued, stops the writer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    [line] = [orjson.loads(x) for x in capfd.readouterr().err.splitlines()]
    assert line["request_id"] == "req-7"
    assert line["case_id"] == "9"
