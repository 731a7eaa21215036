"""The one-pass writer gives the record the two-pass mapping + fastavro gives, for any input."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.codec.mapping import Mapper
from bridge.codec.schemas import load_schemas
from bridge.codec.writer import Unsupported, Writer
from bridge.container import build_pipeline
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
from tests.helpers import sample
from tests.strategies import json_values, mutated

SCHEMAS = load_schemas()
WRITERS = {kind: Writer(schema) for kind, schema in SCHEMAS.items()}
MAPPERS = {kind: Mapper(schema) for kind, schema in SCHEMAS.items()}


def read(kind: str, body: bytes) -> dict[str, Any]:
    record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
        io.BytesIO(body), SCHEMAS[kind].parsed, None, return_record_name=True,
        return_record_name_override=True,
    )  # fmt: skip
    return record


def two_pass(kind: str, data: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMAS[kind].parsed, MAPPERS[kind].to_record(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_vendor_examples_give_the_same_bytes(kind: str) -> None:
    assert WRITERS[kind].write(sample(kind)) == two_pass(kind, sample(kind))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_random_changes_give_the_same_record(case: tuple[str, dict[str, Any]]) -> None:
    kind, data = case
    body = WRITERS[kind].write(data)
    assert read(kind, body) == read(kind, two_pass(kind, data))  # maps compare unordered
    assert MAPPERS[kind].to_notification(read(kind, body)) == data


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.sampled_from(sorted(SCHEMAS))
)
def test_any_object_gives_the_same_record(data: dict[str, Any], kind: str) -> None:
    assert read(kind, WRITERS[kind].write(data)) == read(kind, two_pass(kind, data))


def test_a_shape_it_does_not_handle_falls_back_to_two_passes() -> None:
    schema = SCHEMAS["call"]
    odd = schema.definition | {
        "fields": [{"name": "n", "type": "long"}, *schema.definition["fields"]]
    }
    with pytest.raises(Unsupported):
        Writer(type(schema)(**{**schema.__dict__, "definition": odd}))
    pipeline = build_pipeline(load_settings(spool_dir=""), MemoryPublisher())
    assert all(writer is not None for writer in pipeline.writers.values())
