from __future__ import annotations

import orjson
import pytest

from bridge.errors import InvalidNotification
from bridge.notifications.parse import event_id_of, parse_notification
from tests.helpers import sample, sample_bytes


@pytest.mark.parametrize("kind", ["call", "waba_template", "chatbot"])
def test_the_vendor_examples_parse(kind: str) -> None:
    notification = parse_notification(sample_bytes(kind))
    assert notification.type == kind
    assert notification.case_id == "12345.0"
    assert notification.data == sample(kind)


@pytest.mark.parametrize(
    ("case_id", "key"),
    [("12345.0", "12345.0"), (12345, "12345"), (12345.5, "12345.5"), ("  x ", "  x ")],
)
def test_the_case_id_is_kept_exactly_as_sent(case_id: object, key: str) -> None:
    data = sample()
    data["callee"]["case_id"] = case_id
    assert parse_notification(orjson.dumps(data)).case_id == key


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not-json"),
        (b"\xff\xfe", "not-json"),
        (b"", "not-json"),
        (b"[1, 2]", "not-an-object"),
        (b'{"type": "sms", "callee": {"case_id": "1"}}', "unknown-type"),
        (b'{"callee": {"case_id": "1"}}', "unknown-type"),
        (b'{"type": "call"}', "missing-case-id"),
        (b'{"type": "call", "callee": {"case_id": ""}}', "missing-case-id"),
        (b'{"type": "call", "callee": {"case_id": null}}', "missing-case-id"),
        (b'{"type": "call", "callee": {"case_id": true}}', "missing-case-id"),
        (b'{"type": "call", "callee": "12345"}', "missing-case-id"),
    ],
)
def test_what_cannot_be_typed_is_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        parse_notification(body)
    assert caught.value.reason == reason


def test_event_ids_use_the_natural_ids() -> None:
    assert parse_notification(sample_bytes("call")).event_id == (
        "call:817377d194xxxxxxxxc8ad463bc81d996a"
    )
    assert parse_notification(sample_bytes("waba_template")).event_id == (
        "waba_template:f4d594881abxxxxxxxxxx029e63f055:delivery"
    )
    assert parse_notification(sample_bytes("chatbot")).event_id == (
        "chatbot:a3f5c12ac59xxxxxxxxad71fe6a8ea3e"
    )


def test_each_waba_status_change_is_its_own_event() -> None:
    data = sample("waba_template")
    delivered = event_id_of("waba_template", data)
    data["waba_template"]["status"] = "read"
    assert event_id_of("waba_template", data) != delivered


def test_without_a_natural_id_the_event_id_is_a_content_hash_independent_of_key_order() -> None:
    data = sample("call")
    del data["call"]["call_id"]
    reordered = dict(reversed(list(data.items())))
    first = event_id_of("call", data)
    assert first.startswith("call:sha256:")
    assert event_id_of("call", reordered) == first
    data["timestamp"] += 1
    assert event_id_of("call", data) != first
