from __future__ import annotations

import logging

import orjson
import pytest
from starlette.testclient import TestClient

from bridge.app import WEBHOOK_PATH, create_app
from bridge.logs import JsonFormatter, TextFormatter, Throttle, request_id
from bridge.publish import MemoryPublisher
from bridge.settings import load_settings
from tests.conftest import sample_bytes


def record(message: str = "notification stored", **fields: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "bridge.notification", "msg": message, "levelno": 20})
    made.levelname = "INFO"
    made.__dict__.update(fields)
    return made


def test_json_lines_carry_the_fields_and_the_request_id() -> None:
    token = request_id.set("abc123")
    try:
        line = JsonFormatter().format(record(case_id="12345.0", latency_ms=1.5))
    finally:
        request_id.reset(token)
    document = orjson.loads(line)
    assert document["message"] == "notification stored"
    assert document["case_id"] == "12345.0"
    assert document["latency_ms"] == 1.5
    assert document["request_id"] == "abc123"
    assert document["level"] == "info"


def test_text_lines_are_readable() -> None:
    line = TextFormatter("%(levelname)s %(message)s").format(record(case_id="7"))
    assert line == "INFO notification stored  case_id=7"


def test_repeated_messages_are_throttled() -> None:
    throttle = Throttle(interval=60)
    assert throttle.filter(record("Unable connect to node"))
    assert not throttle.filter(record("Unable connect to node"))
    assert throttle.filter(record("something else"))


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
    assert line.partition == 0
    assert line.offset == 0
    assert line.latency_ms > 0
