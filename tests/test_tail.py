from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from bridge.codec.encode import Codec
from bridge.codec.mapping import Mapper
from bridge.codec.schemas import load_schemas
from bridge.commands.tail import Decoder, pretty
from bridge.notifications.parse import parse_notification
from bridge.notifications.routing import dead_letter_headers, headers_for
from tests.helpers import sample, sample_bytes

SCHEMAS = load_schemas()


def consumed(value: bytes, headers: list[tuple[str, bytes]], key: bytes | None = b"12345.0") -> Any:
    return ConsumerRecord(
        topic="airudder.call", partition=1, offset=7, timestamp=0, timestamp_type=0, key=key,
        value=value, checksum=None, serialized_key_size=0, serialized_value_size=0,
        headers=headers,
    )  # fmt: skip


def stored(kind: str) -> Any:
    notification = parse_notification(sample_bytes(kind))
    value = Codec(SCHEMAS).encode(kind, Mapper(SCHEMAS[kind]).to_record(notification.data))
    return consumed(value, headers_for(notification, SCHEMAS[kind], 0))


def test_a_record_is_shown_with_the_notification_rebuilt() -> None:
    doc = Decoder(SCHEMAS).document(stored("chatbot"))
    assert doc["notification"] == sample("chatbot")
    assert (doc["topic"], doc["partition"], doc["offset"], doc["key"]) == (
        "airudder.call",
        1,
        7,
        "12345.0",
    )
    assert doc["headers"]["notification-type"] == "chatbot"


def test_a_dead_letter_is_shown_raw_with_its_reason() -> None:
    headers = dead_letter_headers("not-json", "bad", "text/plain", b"\xff", 0)
    doc = Decoder(SCHEMAS).document(consumed(b"\xff", headers, key=None))
    assert doc["notification"] is None
    assert (doc["raw"], doc["raw_encoding"]) == ("/w==", "base64")
    assert "reason=not-json" in pretty(doc)


def test_foreign_bytes_are_reported_not_fatal() -> None:
    doc = Decoder(SCHEMAS).document(consumed(b"plain text", [("notification-type", b"call")]))
    assert doc["notification"] is None
    assert "not-avro" in doc["error"]


def test_the_pretty_timeline_shows_the_key_facts() -> None:
    decoder = Decoder(SCHEMAS)
    lines = [
        pretty(decoder.document(stored(kind))) for kind in ("call", "waba_template", "chatbot")
    ]
    assert "intention=E  hangup_type=ByCallee" in lines[0]
    assert "status=delivery  waba_template_name=send_card_for_sales_0331" in lines[1]
    assert "session_end_reason=robot" in lines[2]
    assert "messages=16" in lines[2]
    assert all("case=12345.0" in line and "[airudder.call/1@7]" in line for line in lines)
