from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterator

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
    _Enqueue,
    _Writer,
    configure_logging,
    log_notification,
    request_id,
    writer_handler,
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


FACTS: dict[str, object] = {
    "outcome": "stored",
    "kind": "call",
    "case_id": 'ca"se\u00e9\n',  # escaped, and beyond ASCII, as a client may send it
    "event_id": "call:817377d194xxxxxxxxc8ad463bc81d996a",
    "topic": "airudder.call",
    "partition": 3,
    "offset": None,
    "reason": None,
    "latency_ms": 12.34,
}


@pytest.fixture
def bridge_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], _Writer]]:
    """Root logging as `configure_logging` leaves it, with a writer that is not started (the
    test writes what is queued), and the clock stopped."""
    root = logging.getLogger()
    notification = logging.getLogger("bridge.notification")
    saved = root.handlers[:], root.level, notification.filters[:]
    monkeypatch.setattr(time, "time", lambda: 1744699269.1239996)

    def configure(json: bool) -> _Writer:
        enqueue = writer_handler(json)
        assert isinstance(enqueue, _Enqueue)
        enqueue.writer.stop()  # its thread ends; the test writes what is queued
        root.handlers[:] = [enqueue]  # caplog's own handlers too: as outside pytest
        root.setLevel(logging.INFO)
        return enqueue.writer

    yield configure
    root.handlers[:], level, notification.filters[:] = saved
    root.setLevel(level)


def written(writer: _Writer) -> str:
    writer.handler.setStream(stream := io.StringIO())  # type: ignore[attr-defined]
    writer.write_waiting()
    return stream.getvalue()


@pytest.mark.parametrize("json", [True, False])
def test_the_fast_line_is_the_line_a_record_makes(
    bridge_root: Callable[[bool], _Writer], json: bool
) -> None:
    writer = bridge_root(json)
    logger = logging.getLogger("bridge.notification")
    token = request_id.set("req-9")
    try:
        log_notification(logger, **FACTS)  # type: ignore[arg-type]
        fast = [type(x) for x in writer.records]
        fast_line = written(writer)
        logger.addFilter(lambda _: True)  # a filter of the user's: the ordinary call
        log_notification(logger, **FACTS)  # type: ignore[arg-type]
        slow = [type(x) for x in writer.records]
        slow_line = written(writer)
    finally:
        request_id.reset(token)
    assert fast == ([tuple] if json else [logging.LogRecord])  # text: always a record
    assert slow == [logging.LogRecord]
    assert fast_line == slow_line
    if json:
        document = orjson.loads(fast_line)
        assert list(document) == [
            *("time", "level", "logger", "message", "outcome", "type", "case_id", "event_id"),
            *("topic", "partition", "offset", "reason", "latency_ms", "request_id"),
        ]
        assert document["time"] == "2025-04-15T06:41:09.124Z"
        assert document["case_id"] == FACTS["case_id"]
    else:
        assert "notification stored  outcome=stored type=call" in fast_line


def test_another_handler_gets_the_ordinary_record(
    bridge_root: Callable[[bool], _Writer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = bridge_root(True)  # noqa: FBT003
    # The caller's line is found again (writer_handler turns that off for bridge's own use).
    monkeypatch.setattr(logging, "_srcfile", logging.addLevelName.__code__.co_filename)
    logger = logging.getLogger("bridge.notification")
    logging.getLogger().addHandler(caplog.handler)
    log_notification(logger, **FACTS)  # type: ignore[arg-type]
    [record] = caplog.records
    assert record.getMessage() == "notification stored"
    assert record.__dict__["type"] == "call"
    assert record.funcName == "test_another_handler_gets_the_ordinary_record"  # the caller's
    assert [type(x) for x in writer.records] == [logging.LogRecord]  # and bridge's writer too


def test_level_warning_silences_the_line(
    bridge_root: Callable[[bool], _Writer], caplog: pytest.LogCaptureFixture
) -> None:
    writer = bridge_root(True)  # noqa: FBT003
    logging.getLogger().setLevel(logging.WARNING)  # BRIDGE_LOG_LEVEL=warning
    log_notification(logging.getLogger("bridge.notification"), **FACTS)  # type: ignore[arg-type]
    assert not writer.records
    assert not caplog.records


def test_fast_lines_beyond_the_queue_are_dropped_and_counted(
    bridge_root: Callable[[bool], _Writer],
) -> None:
    writer = bridge_root(True)  # noqa: FBT003
    writer.limit = 2
    for _ in range(5):
        log_notification(logging.getLogger("bridge.notification"), **FACTS)  # type: ignore[arg-type]
    assert [type(x) for x in writer.records] == [tuple, tuple]
    assert writer.dropped == 3
