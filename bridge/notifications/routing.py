"""Where a notification goes: its topic, key and headers. The contract with consumers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from bridge.codec.schemas import Schema, declarations
from bridge.notifications.parse import TYPES, Notification
from bridge.notifications.record import Headers
from bridge.settings import Settings
from bridge.telemetry.logs import timestamp

DLQ: str = "dlq"
REDRIVEN_FROM: str = "redriven-from"  # on records `bridge redrive` wrote: their dead letter


def topic_for(prefix: str, kind: str) -> str:
    return f"{prefix}{kind}"


def all_topics(prefix: str, types: Iterable[str] = TYPES) -> list[str]:
    """The topics bridge writes: one per notification type (the packaged schemas' types by
    default; the service's come from BRIDGE_SCHEMA_DIR), and the dead letters'."""
    return [topic_for(prefix, kind) for kind in (*types, DLQ)]


def topics_of(settings: Settings) -> list[str]:
    """The topics this configuration writes: its schemas' types (BRIDGE_SCHEMA_DIR), and dlq."""
    return all_topics(settings.topic_prefix, declarations(settings.schema_dir))


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


def redriven_headers(headers: Headers, topic: str, partition: int, offset: int) -> Headers:
    """A re-driven record's headers: the live ones (its original `received-at` among them) and
    where its dead letter was, `<topic>/<partition>@<offset>`."""
    return [*headers, (REDRIVEN_FROM, f"{topic}/{partition}@{offset}".encode())]
