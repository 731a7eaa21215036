"""Where a notification goes: its topic, key and headers. The contract with consumers."""

from __future__ import annotations

import hashlib

from bridge.codec.schemas import Schema
from bridge.notifications.parse import TYPES, Notification
from bridge.notifications.record import Headers
from bridge.telemetry.logs import timestamp

DLQ: str = "dlq"


def topic_for(prefix: str, kind: str) -> str:
    return f"{prefix}{kind}"


def all_topics(prefix: str) -> list[str]:
    return [topic_for(prefix, kind) for kind in (*TYPES, DLQ)]


def headers_for(notification: Notification, schema: Schema, received_at: float) -> Headers:
    return [
        ("event-id", notification.event_id.encode()),
        ("notification-type", notification.type.encode()),
        ("received-at", timestamp(received_at).encode()),
        ("schema", schema.fullname.encode()),
    ]


def dead_letter_id(body: bytes) -> str:
    return f"dlq:sha256:{hashlib.sha256(body).hexdigest()}"


def dead_letter_headers(
    reason: str, detail: str, content_type: str, body: bytes, received_at: float
) -> Headers:
    return [
        ("event-id", dead_letter_id(body).encode()),
        ("notification-type", DLQ.encode()),
        ("received-at", timestamp(received_at).encode()),
        ("dlq-reason", reason.encode()),
        ("dlq-detail", detail[:500].encode()),
        ("content-type", content_type[:200].encode()),
    ]
