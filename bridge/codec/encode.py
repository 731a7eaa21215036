"""Encode stage: an Avro record to bytes, and back. Two framings:

- Avro single-object encoding (the Avro specification), without a registry: `C3 01`, the
  8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's canonical form, the body.
- Confluent wire format, with a schema registry: `00`, the 4-byte big-endian schema id, the body.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any, Final, cast

from fastavro import schemaless_reader, schemaless_writer

from bridge.codec.schemas import Schema
from bridge.errors import UndecodableRecord

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MAGIC) + 8
CONFLUENT_MAGIC: Final = b"\x00"
CONFLUENT_HEADER_SIZE: Final = 5


def confluent_id(value: bytes) -> int | None:
    """The schema id of a value in Confluent wire format, else None."""
    if value[:1] == CONFLUENT_MAGIC and len(value) >= CONFLUENT_HEADER_SIZE:
        return int.from_bytes(value[1:CONFLUENT_HEADER_SIZE], "big")
    return None


class Codec:
    """Writes with the current schema of each type; reads any schema it knows."""

    def __init__(
        self,
        current: dict[str, Schema],
        known: Iterable[Schema] = (),
        ids: dict[str, int] | None = None,
    ) -> None:
        self._current = current
        self._prefix = {kind: MAGIC + s.fingerprint for kind, s in current.items()}
        self._by_fingerprint = {s.fingerprint: s for s in (*known, *current.values())}
        self._by_id: dict[int, Schema] = {}
        if ids is not None:
            self.use_ids(ids)

    def use_ids(self, ids: dict[str, int]) -> None:
        """Write in the Confluent wire format, with the registry's id of each type's schema."""
        current = self._current
        self._prefix = {kind: CONFLUENT_MAGIC + ids[kind].to_bytes(4, "big") for kind in current}
        self._by_id.update({ids[kind]: current[kind] for kind in current})

    def learn(self, schema_id: int, schema: Schema) -> None:
        """A writer schema fetched from the registry by id."""
        self._by_id[schema_id] = schema

    def by_fingerprint(self, fingerprint: bytes) -> Schema | None:
        return self._by_fingerprint.get(fingerprint)

    def knows(self, schema_id: int) -> bool:
        return schema_id in self._by_id

    def encode(self, kind: str, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._prefix[kind])
        schemaless_writer(buffer, self._current[kind].parsed, record)
        return buffer.getvalue()

    def frame(self, kind: str, body: bytes) -> bytes:
        """An Avro body already written with the current schema of `kind`, framed."""
        return self._prefix[kind] + body

    def decode(self, value: bytes) -> tuple[Schema, dict[str, Any]]:
        """The writer schema and the record. Raises UndecodableRecord for foreign bytes."""
        if value[:2] == MAGIC and len(value) >= HEADER_SIZE:
            schema = self._by_fingerprint.get(value[2:HEADER_SIZE])
            if schema is None:
                raise UndecodableRecord("unknown-schema", value[2:HEADER_SIZE].hex())
            body = value[HEADER_SIZE:]
        elif (schema_id := confluent_id(value)) is not None:
            schema = self._by_id.get(schema_id)
            if schema is None:
                raise UndecodableRecord("unknown-schema-id", str(schema_id))
            body = value[CONFLUENT_HEADER_SIZE:]
        else:
            raise UndecodableRecord("not-avro", "neither single-object nor Confluent framing")
        record = schemaless_reader(
            io.BytesIO(body),
            schema.parsed,
            None,
            return_record_name=True,
            return_record_name_override=True,
        )
        return schema, cast("dict[str, Any]", record)
