"""The topic contract as an AsyncAPI 3 document, built from the declared notification types
(`bridge.codec.schemas.declarations`): a type added by its schema file is in it without an
edit. `make docs` writes it to asyncapi.yaml; a test keeps that file current."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from bridge import __version__
from bridge.codec.schemas import Declaration, declarations, default_schema_dir
from bridge.notifications.routing import DLQ, REDRIVEN_FROM, topic_for

DEAD_LETTER_REASONS: Final = (
    "not-json",
    "too-deep",
    "not-an-object",
    "duplicate-keys",
    "number-out-of-range",
    "unknown-type",
    "missing-case-id",
    "encode-failed",
    "too-large",
)
_DESCRIPTION: Final = (
    "What bridge writes to Kafka: one topic per notification type, keyed by `callee.case_id` "
    "(UTF-8, exactly as sent; a JSON number becomes its JSON text), so a case's history is "
    "ordered within its partition; plus a dead-letter topic for what cannot be typed. "
    "Values are Avro: single-object encoding (`C3 01` + CRC-64-AVRO fingerprint + body) "
    "without a schema registry, the Confluent wire format (`00` + 4-byte schema id + body) "
    "with one. The rules that rebuild the vendor's JSON exactly are in avro/README.md. The "
    "topic prefix (`airudder.` here) is BRIDGE_TOPIC_PREFIX. Generated from the schemas "
    "(`make docs`)."
)


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def _message_name(declared: Declaration) -> str:
    short = declared.record.rpartition(".")[2]
    return short[0].lower() + short[1:]


def _event_id_rule(declared: Declaration) -> str:
    if not declared.event_id:
        return f"{declared.type}:sha256:<hash>"
    return declared.type + "".join(f":<{'.'.join(path)}>" for path in declared.event_id)


def document(
    directory: Path | None = None, prefix: str = "airudder.", schema_ref: str = "./avro/"
) -> dict[str, Any]:
    """The AsyncAPI document of the types declared in `directory` (default: the packaged
    schemas); each payload refers to its schema file as `schema_ref` + file name."""
    types = declarations(directory or default_schema_dir())
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for kind, declared in types.items():
        name = _message_name(declared)
        channels[kind] = {
            "address": topic_for(prefix, kind),
            "description": declared.description or f"Notifications of type {kind}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish{_camel(kind)}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{kind}"},
        }
        messages[name] = {
            "name": declared.record.rpartition(".")[2],
            "traits": [{"$ref": "#/components/messageTraits/notification"}],
            "payload": {
                "schemaFormat": "application/vnd.apache.avro;version=1.11.0",
                "schema": {"$ref": f"{schema_ref}{declared.record}.avsc"},
            },
        }
    channels[DLQ] = {
        "address": topic_for(prefix, DLQ),
        "description": "Bodies that cannot be typed, as received, with the reason in headers.",
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
    }
    operations["publishDeadLetter"] = {"action": "send", "channel": {"$ref": "#/channels/dlq"}}
    messages["deadLetter"] = _dead_letter()
    rules = ", ".join(_event_id_rule(d) for d in types.values())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "AIRudder bridge topics",
            "version": __version__,
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "avro/binary",
        "servers": {
            "kafka": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "Any Kafka-compatible cluster (Apache Kafka, Redpanda, MSK, "
                "Confluent Cloud).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {
                "caseKey": {
                    "type": "string",
                    "description": "callee.case_id as sent (JSON text for a number).",
                }
            },
            "messageTraits": {"notification": _notification_trait(list(types), rules)},
            "messages": messages,
        },
    }


def _notification_trait(types: list[str], rules: str) -> dict[str, Any]:
    return {
        "headers": {
            "type": "object",
            "required": ["event-id", "notification-type", "received-at", "schema"],
            "properties": {
                "event-id": {
                    "type": "string",
                    "description": "Stable per event; the vendor's retries share it: "
                    f"{rules}; without those members <type>:sha256:<hash of the canonical "
                    "JSON>.",
                },
                "notification-type": {"type": "string", "enum": types},
                "received-at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When bridge received the request, RFC 3339 UTC, "
                    "milliseconds (a re-driven dead letter keeps its own).",
                },
                "schema": {"type": "string", "description": "Full name of the writer schema."},
                REDRIVEN_FROM: {
                    "type": "string",
                    "description": "Only on records `bridge redrive` wrote: the dead letter "
                    "they came from, <dlq topic>/<partition>@<offset>.",
                },
            },
        },
        "bindings": {"kafka": {"key": {"$ref": "#/components/schemas/caseKey"}}},
    }


def _dead_letter() -> dict[str, Any]:
    return {
        "name": "DeadLetter",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "required": [
                "event-id",
                "notification-type",
                "received-at",
                "dlq-reason",
                "dlq-detail",
                "content-type",
            ],
            "properties": {
                "event-id": {"type": "string", "description": "dlq:sha256:<hash of the body>."},
                "notification-type": {"const": DLQ},
                "received-at": {"type": "string", "format": "date-time"},
                "dlq-reason": {"type": "string", "enum": list(DEAD_LETTER_REASONS)},
                "dlq-detail": {"type": "string", "maxLength": 500},
                "content-type": {"type": "string", "description": "The request's Content-Type."},
            },
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": ["string", "null"],
                    "description": "The case id when one can be found in the body.",
                }
            }
        },
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The request body, byte for byte.",
        },
    }
