from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest

from bridge.codec.encode import MAGIC, Codec
from bridge.codec.mapping import Mapper
from bridge.codec.schemas import load_schemas
from bridge.errors import UndecodableRecord
from tests.helpers import sample

SCHEMAS = load_schemas()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO written from the Avro specification, independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("kind", ["call", "waba_template", "chatbot"])
def test_values_are_in_avro_single_object_encoding(kind: str) -> None:
    schema = SCHEMAS[kind]
    value = Codec(SCHEMAS).encode(kind, Mapper(schema).to_record(sample(kind)))
    assert value[:2] == b"\xc3\x01" == MAGIC
    (fingerprint,) = struct.unpack("<Q", value[2:10])
    assert fingerprint == crc64_avro(schema.canonical.encode())
    # The body is plain Avro binary: any Avro library reads it with the schema.
    body: Any = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema.parsed, None)
    assert body["callee"]["case_id"] == "12345.0"


def test_decode_finds_the_writer_schema_by_fingerprint() -> None:
    codec = Codec(SCHEMAS)
    record = Mapper(SCHEMAS["chatbot"]).to_record(sample("chatbot"))
    schema, decoded = codec.decode(codec.encode("chatbot", record))
    assert schema.fullname == "airudder.ChatbotNotification"
    assert Mapper(schema).to_notification(decoded) == sample("chatbot")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "not-avro"),
        (b'{"json": true}', "not-avro"),
        (b"\xc3\x01\x00", "not-avro"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x00", "unknown-schema"),
    ],
)
def test_decode_refuses_foreign_bytes(value: bytes, reason: str) -> None:
    with pytest.raises(UndecodableRecord) as caught:
        Codec(SCHEMAS).decode(value)
    assert caught.value.reason == reason
