from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from bridge.codec.schemas import load_schemas
from bridge.notifications.parse import parse_notification
from bridge.notifications.routing import (
    all_topics,
    dead_letter_headers,
    headers_for,
    topic_for,
)
from bridge.telemetry.logs import timestamp
from tests.helpers import sample_bytes


def test_one_topic_per_type_and_a_dead_letter_topic() -> None:
    assert topic_for("airudder.", "call") == "airudder.call"
    assert all_topics("x-") == ["x-call", "x-chatbot", "x-waba_template", "x-dlq"]


def test_received_at_is_rfc3339_utc_with_milliseconds() -> None:
    assert timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp(1744699269.1234))


def test_headers_carry_event_id_type_time_and_schema() -> None:
    notification = parse_notification(sample_bytes("waba_template"))
    headers = dict(headers_for(notification, load_schemas()["waba_template"], 0))
    assert headers == {
        "event-id": b"waba_template:f4d594881abxxxxxxxxxx029e63f055:delivery",
        "notification-type": b"waba_template",
        "received-at": b"1970-01-01T00:00:00.000Z",
        "schema": b"airudder.WabaTemplateNotification",
    }


def test_dead_letters_carry_their_reason_and_a_content_hash_id() -> None:
    first = dict(dead_letter_headers("not-json", "x" * 900, "text/plain", b"body", 0))
    again = dict(dead_letter_headers("not-json", "", "", b"body", 5))
    assert first["dlq-reason"] == b"not-json"
    assert len(first["dlq-detail"]) == 500
    assert first["event-id"] == again["event-id"]
    assert first["event-id"].startswith(b"dlq:sha256:")


@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_timestamps_are_the_ones_datetime_writes(when: float) -> None:
    expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    assert timestamp(when) == expected.replace("+00:00", "Z")
