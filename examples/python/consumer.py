"""Read a case's history from bridge's topics, in order: aiokafka + fastavro, nothing else.

    python examples/python/consumer.py --bootstrap 127.0.0.1:9092 --case-id 12345.0
    python examples/python/consumer.py --bootstrap ... --registry http://registry:8081 ...

Values are Avro in single-object encoding (C3 01 + CRC-64-AVRO fingerprint + body), or, when
bridge writes through a schema registry, the Confluent wire format (00 + schema id + body).
Writer schemas are found by fingerprint among avro/history/ (every published version), or by id
in the registry. The vendor's JSON is rebuilt with the rule of avro/README.md: the typed fields
that are not null, overlaid with `unmapped` (JSON texts).

`rebuild` also takes what `confluent_kafka`'s `AvroDeserializer` returns, with or without
`return_record_name=True`: a union of records (a chat message's `content`) is then the record
alone (the default, as fastavro reads it here) or a `(record name, record)` pair:

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    context = SerializationContext(message.topic(), MessageField.VALUE)
    notification = rebuild(deserialize(message.value(), context))
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaConsumer
from fastavro.schema import fingerprint, to_parsing_canonical_form

HISTORY = Path(__file__).resolve().parents[2] / "avro" / "history"


def known_schemas() -> dict[bytes, Any]:
    schemas = {}
    for path in HISTORY.glob("*/v*.avsc"):
        definition = json.loads(path.read_text())
        canonical = to_parsing_canonical_form(definition)
        schemas[bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))] = fastavro.parse_schema(
            definition
        )
    return schemas


class Reader:
    def __init__(self, registry: str | None) -> None:
        self.by_fingerprint = known_schemas()
        self.by_id: dict[int, Any] = {}
        self.registry = registry

    def schema_for(self, value: bytes) -> tuple[Any, bytes]:
        if value[:2] == b"\xc3\x01":  # single-object encoding
            return self.by_fingerprint[value[2:10]], value[10:]
        if value[:1] == b"\x00":  # Confluent wire format
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self.by_id:
                with urllib.request.urlopen(f"{self.registry}/schemas/ids/{schema_id}") as answer:
                    text = json.load(answer)["schema"]
                self.by_id[schema_id] = fastavro.parse_schema(json.loads(text))
            return self.by_id[schema_id], value[5:]
        raise ValueError("not an Avro value from bridge")

    def notification(self, value: bytes) -> dict[str, Any]:
        schema, body = self.schema_for(value)
        record = fastavro.schemaless_reader(io.BytesIO(body), schema, None)
        return rebuild(record)


def rebuild(value: Any) -> Any:
    """A record back to the vendor's JSON: typed fields not null, then `unmapped` on top."""
    if isinstance(value, tuple):  # (record name, record): a union read with return_record_name
        return rebuild(value[1])
    if isinstance(value, dict) and "unmapped" in value:
        out = {k: rebuild(v) for k, v in value.items() if k != "unmapped" and v is not None}
        out.update({k: json.loads(text) for k, text in value["unmapped"].items()})
        return out
    if isinstance(value, list):
        return [rebuild(v) for v in value]
    return value


async def history(
    bootstrap: str, case_id: str, prefix: str, registry: str | None, idle: float
) -> None:
    reader = Reader(registry)
    # No consumer group: a consumer subscribed without one is given every partition of its
    # topics (and each case's records sit in one of them, in order); from the oldest record.
    consumer = AIOKafkaConsumer(
        *(f"{prefix}{kind}" for kind in ("call", "waba_template", "chatbot")),
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for message in messages:  # one partition: the case's records in order
                    if message.key != case_id.encode():
                        continue
                    headers = {k: v.decode() for k, v in message.headers}
                    print(
                        json.dumps(
                            {
                                "headers": headers,
                                "notification": reader.notification(message.value),
                            },
                            ensure_ascii=False,
                        )
                    )
            if batch:
                last = time.monotonic()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--case-id", required=True)
    parser.add_argument("--prefix", default="airudder.")
    parser.add_argument("--registry", help="schema registry URL, for the Confluent wire format")
    parser.add_argument(
        "--idle", type=float, default=2.0, help="stop after this long with nothing new"
    )
    a = parser.parse_args()
    asyncio.run(history(a.bootstrap, a.case_id, a.prefix, a.registry, a.idle))
