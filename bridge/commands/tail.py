"""`bridge tail`: read the topics and print each record, rebuilt as the vendor sent it."""

from __future__ import annotations

import base64
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import ConsumerRecord

from bridge.codec.encode import Codec, confluent_id
from bridge.codec.mapping import Mapper
from bridge.codec.registry import SchemaRegistry
from bridge.codec.schemas import Schema, load_history, load_schemas
from bridge.errors import RegistryError, UndecodableRecord
from bridge.kafka.client import reading
from bridge.kafka.diagnosis import check_connection
from bridge.notifications.routing import DLQ, topic_for
from bridge.settings import Settings


@dataclass(frozen=True)
class TailOptions:
    types: tuple[str, ...]
    case_id: str | None = None
    from_beginning: bool = False
    until_idle: float | None = None
    format: str = "json"


class Decoder:
    """Turns a consumed record into the JSON document `bridge tail --format json` prints."""

    def __init__(
        self,
        schemas: dict[str, Schema] | None = None,
        registry: SchemaRegistry | None = None,
        directory: Path | None = None,
    ) -> None:
        schemas = schemas or load_schemas(directory)
        # Every version kept in avro/history/ decodes too: old records stay readable.
        history = [s for versions in load_history(directory).values() for _, s in versions]
        self._codec = Codec(schemas, known=history)
        self._registry = registry
        self._mappers: dict[str, Mapper] = {}

    async def learn(self, value: bytes) -> None:
        """Fetch the writer schema of a Confluent-framed value from the registry, once."""
        schema_id = confluent_id(value)
        if schema_id is None or self._registry is None or self._codec.knows(schema_id):
            return
        with contextlib.suppress(RegistryError):  # then shown as an unknown schema id
            self._codec.learn(schema_id, await self._registry.schema_by_id(schema_id))

    def _mapper(self, schema: Schema) -> Mapper:
        mapper = self._mappers.get(schema.fullname)
        if mapper is None or mapper.schema.fingerprint != schema.fingerprint:
            mapper = self._mappers[schema.fullname] = Mapper(self._with_our_properties(schema))
        return mapper

    def _with_our_properties(self, schema: Schema) -> Schema:
        # A registry may drop the `x-types` of our unions; a schema of ours with the same
        # canonical form has them.
        known = self._codec.by_fingerprint(schema.fingerprint)
        return known if known is not None else schema

    def document(self, message: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
        headers = {k: v.decode("utf-8", "replace") for k, v in message.headers}
        doc: dict[str, Any] = {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": None if message.key is None else message.key.decode("utf-8", "replace"),
            "headers": headers,
        }
        value: bytes = message.value or b""
        if headers.get("notification-type") == DLQ:
            doc["notification"] = None
            try:
                doc["raw"], doc["raw_encoding"] = value.decode(), "utf-8"
            except UnicodeDecodeError:
                doc["raw"], doc["raw_encoding"] = base64.b64encode(value).decode(), "base64"
            return doc
        try:
            schema, record = self._codec.decode(value)
        except UndecodableRecord as exc:
            doc["notification"] = None
            doc["error"] = str(exc)
            return doc
        doc["notification"] = self._mapper(schema).to_notification(record)
        return doc


def pretty(doc: dict[str, Any]) -> str:
    """One readable timeline line per record."""
    headers = doc["headers"]
    kind = headers.get("notification-type", "?")
    notification: dict[str, Any] = doc.get("notification") or {}
    found = notification.get(kind)
    section: dict[str, Any] = found if isinstance(found, dict) else {}
    facts: list[tuple[str, Any]]
    if kind == "call":
        facts = [(k, section.get(k)) for k in ("intention", "hangup_type", "talk_round")]
        facts.append(("started", section.get("call_start_time")))
    elif kind == "waba_template":
        facts = [(k, section.get(k)) for k in ("status", "waba_template_name", "send_time")]
    elif kind == "chatbot":
        facts = [(k, section.get(k)) for k in ("session_end_reason", "status", "intention")]
        facts.append(("messages", len(section.get("messages") or [])))
    else:
        facts = [("reason", headers.get("dlq-reason")), ("detail", headers.get("dlq-detail"))]
    shown = "  ".join(f"{k}={v}" for k, v in facts if v not in (None, ""))
    where = f"{doc['topic']}/{doc['partition']}@{doc['offset']}"
    return f"{headers.get('received-at', '?'):24}  {kind:13}  case={doc['key']}  {shown}  [{where}]"


async def tail(settings: Settings, options: TailOptions, out: IO[str] = sys.stdout) -> int:
    """Print the records; return how many were printed."""
    await check_connection(settings)  # a refusal in one line naming its setting
    registry = SchemaRegistry(settings) if settings.schema_registry_url else None
    decoder = Decoder(registry=registry, directory=settings.schema_dir)
    topics = [topic_for(settings.topic_prefix, kind) for kind in options.types]
    key = options.case_id.encode() if options.case_id is not None else None
    printed = 0
    try:
        async with reading(
            settings,
            topics,
            from_beginning=options.from_beginning,
            client_id=f"{settings.kafka_client_id}-tail",
        ) as read:
            for topic in read.missing:
                print(f"bridge tail: topic {topic} does not exist (yet)", file=sys.stderr)
            async for message in read.records(options.until_idle):
                if key is not None and message.key != key:
                    continue
                await decoder.learn(message.value or b"")
                doc = decoder.document(message)
                line = pretty(doc) if options.format == "pretty" else orjson.dumps(doc).decode()
                print(line, file=out, flush=True)
                printed += 1
    finally:
        if registry is not None:
            await registry.close()
    return printed
