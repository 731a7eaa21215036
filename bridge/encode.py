"""Encode stage: an Avro record to bytes in Avro single-object encoding, and back.

Single-object encoding (Avro specification): `C3 01`, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any, Final, cast

from fastavro import schemaless_reader, schemaless_writer

from bridge.errors import InvalidNotification
from bridge.schemas import Schema

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MAGIC) + 8


class Codec:
    """Writes with the current schema of each type; reads any schema it knows by fingerprint."""

    def __init__(self, current: dict[str, Schema], known: Iterable[Schema] = ()) -> None:
        self._current = current
        self._prefix = {kind: MAGIC + s.fingerprint for kind, s in current.items()}
        self._by_fingerprint = {s.fingerprint: s for s in (*known, *current.values())}

    def encode(self, kind: str, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._prefix[kind])
        schemaless_writer(buffer, self._current[kind].parsed, record)
        return buffer.getvalue()

    def decode(self, value: bytes) -> tuple[Schema, dict[str, Any]]:
        """The writer schema and the record. Raises InvalidNotification for foreign bytes."""
        if value[:2] != MAGIC or len(value) < HEADER_SIZE:
            raise InvalidNotification("not-single-object-encoding")
        schema = self._by_fingerprint.get(value[2:HEADER_SIZE])
        if schema is None:
            raise InvalidNotification("unknown-schema", value[2:HEADER_SIZE].hex())
        record = schemaless_reader(
            io.BytesIO(value[HEADER_SIZE:]),
            schema.parsed,
            None,
            return_record_name=True,
            return_record_name_override=True,
        )
        return schema, cast("dict[str, Any]", record)
