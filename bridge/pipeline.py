"""The whole path for one notification: parse, map, encode, publish; or the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson

from bridge.encode import Codec
from bridge.errors import InvalidNotification, PublishTimeout
from bridge.mapping import Mapper
from bridge.parse import case_id_of, parse_notification
from bridge.publish import Delivery, Publisher
from bridge.routing import DLQ, dead_letter_headers, headers_for, topic_for
from bridge.schemas import Schema, load_schemas
from bridge.settings import Settings

logger = logging.getLogger("bridge.notification")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one notification."""

    outcome: str  # "stored" or "dead_letter"
    type: str
    case_id: str | None
    event_id: str
    delivery: Delivery
    reason: str = ""


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        schemas: dict[str, Schema] | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.schemas = schemas or load_schemas()
        self.mappers = {kind: Mapper(schema) for kind, schema in self.schemas.items()}
        self.codec = Codec(self.schemas)

    async def accept(
        self, body: bytes, content_type: str = "", received_at: float | None = None
    ) -> Outcome:
        """Store one notification; return once Kafka has acknowledged it.

        Raises PublishError (retriable) when Kafka did not acknowledge within the ack budget.
        """
        received_at = time.time() if received_at is None else received_at
        try:
            notification = parse_notification(body)
            record = self.mappers[notification.type].to_record(notification.data)
            value = self.codec.encode(notification.type, record)
        except InvalidNotification as exc:
            return await self._dead_letter(body, exc, content_type, received_at)
        except (ValueError, TypeError, OverflowError) as exc:  # fastavro refused the record
            invalid = InvalidNotification("encode-failed", f"{type(exc).__name__}: {exc}")
            return await self._dead_letter(body, invalid, content_type, received_at)
        schema = self.schemas[notification.type]
        delivery = await self._publish(
            topic_for(self.settings.topic_prefix, notification.type),
            notification.case_id.encode(),
            value,
            headers_for(notification, schema, received_at),
        )
        return Outcome(
            "stored", notification.type, notification.case_id, notification.event_id, delivery
        )

    async def _dead_letter(
        self, body: bytes, exc: InvalidNotification, content_type: str, received_at: float
    ) -> Outcome:
        headers = dead_letter_headers(exc.reason, exc.detail, content_type, body, received_at)
        case_id = _best_effort_case_id(body)
        delivery = await self._publish(
            topic_for(self.settings.topic_prefix, DLQ),
            case_id.encode() if case_id else None,
            body,
            headers,
        )
        return Outcome(
            "dead_letter", DLQ, case_id, headers[0][1].decode(), delivery, reason=exc.reason
        )

    async def _publish(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> Delivery:
        try:
            async with asyncio.timeout(self.settings.ack_timeout):
                return await self.publisher.publish(topic, key, value, headers)
        except TimeoutError:
            raise PublishTimeout(
                f"no acknowledgement from Kafka within {self.settings.ack_timeout:g}s"
            ) from None


def _best_effort_case_id(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
        return case_id_of(data) if isinstance(data, dict) else None
    except (orjson.JSONDecodeError, InvalidNotification):
        return None
