from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.codec.mapping import UNMAPPED, Mapper
from bridge.codec.schemas import Schema, from_definition, load_schemas
from tests.helpers import sample
from tests.strategies import json_values, mutated

SCHEMAS = load_schemas()
MAPPERS = {kind: Mapper(schema) for kind, schema in SCHEMAS.items()}
KINDS = sorted(SCHEMAS)


def through_avro(
    kind: str, notification: dict[str, Any], *, record_names: bool = True
) -> dict[str, Any]:
    """Map, write as Avro bytes, read back, rebuild: what a consumer gets. Read with fastavro's
    union notation (record_names, as bridge reads), or without it (as Confluent's
    AvroDeserializer reads by default: a union of records gives the record alone)."""
    return rebuild(MAPPERS[kind], write(SCHEMAS[kind], notification), record_names=record_names)


def write(schema: Schema, notification: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, Mapper(schema).to_record(notification))
    return buffer.getvalue()


def rebuild(mapper: Mapper, body: bytes, *, record_names: bool) -> dict[str, Any]:
    record: Any = fastavro.schemaless_reader(
        io.BytesIO(body),
        mapper.schema.parsed,
        None,
        return_record_name=record_names,
        return_record_name_override=record_names,
    )
    return mapper.to_notification(record)


def plain(node: Any, keep_union_names: bool = False) -> Any:
    """The record without fastavro's (branch name, value) union notation."""
    if isinstance(node, tuple):
        name, value = node
        if keep_union_names and name.rpartition(".")[2].endswith("Content"):
            return (name, plain(value, keep_union_names))
        return plain(value, keep_union_names)
    if isinstance(node, dict):
        return {k: plain(v, keep_union_names) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v, keep_union_names) for v in node]
    return node


def all_unmapped(node: Any) -> list[dict[str, str]]:
    found = []
    if isinstance(node, tuple):
        node = node[1]
    if isinstance(node, dict):
        if node.get(UNMAPPED):
            found.append(node[UNMAPPED])
        for key, value in node.items():
            if key != UNMAPPED:
                found.extend(all_unmapped(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(all_unmapped(item))
    return found


@pytest.mark.parametrize("record_names", [True, False], ids=["union-names", "plain-unions"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_vendor_examples_round_trip(kind: str, *, record_names: bool) -> None:
    assert through_avro(kind, sample(kind), record_names=record_names) == sample(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_of_the_vendor_example_has_a_typed_home(kind: str) -> None:
    # The full example carries all three sections; each type's schema types all of it.
    record = MAPPERS[kind].to_record(sample("call"))
    assert all_unmapped(record) == []


def test_typed_fields_are_real_avro_fields() -> None:
    record = plain(MAPPERS["call"].to_record(sample("call")))
    assert record["call"]["call_id"] == "817377d194xxxxxxxxc8ad463bc81d996a"
    assert record["call"]["asr_result"][0]["text"] == "no no no no no"
    assert record["call"]["ner_slots"] == {"item_name": "da", "receivetime": "2"}
    assert record["custom_attribute"] == {"a": "1", "b": "2"}
    chat = plain(MAPPERS["chatbot"].to_record(sample("chatbot")))["chatbot"]
    assert chat["messages"][0]["sender_type"] == "system"
    assert chat["variables"]["project"] == "voicebot"


def test_chat_message_content_is_a_union_chosen_by_type() -> None:
    record = plain(MAPPERS["chatbot"].to_record(sample("chatbot")), keep_union_names=True)
    messages = record["chatbot"]["messages"]
    branches = [m["content"][0].rpartition(".")[2] for m in messages]
    assert branches == [
        "SystemContent",
        "TemplateContent",
        "ButtonContent",
        "TextContent",
        "MediaContent",
        "MediaContent",
        "InteractiveContent",
        "InteractiveContent",
        "InteractiveContent",
        "InteractiveContent",
        "LocationContent",
        "ContactsContent",
        "SystemContent",
        "TextContent",
        "TextContent",
        "SystemContent",
    ]
    location = messages[10]["content"][1]["location"]
    assert location["latitude"] == pytest.approx(31.178762435913)
    reply = messages[2]["reply"]
    assert reply["content"][1]["template"]["info"]["name"] == "opt_out_02_27_english"


def test_an_unknown_content_type_goes_to_other_content_and_round_trips() -> None:
    data = sample("chatbot")
    data["chatbot"]["messages"] = [
        {"msg_id": "1", "content": {"type": "sticker_pack", "pack": {"id": 7}}},
        {"msg_id": "2", "content": {"text": "no type at all"}},
        {"msg_id": "3", "content": "just a string"},
    ]
    record = plain(MAPPERS["chatbot"].to_record(data), keep_union_names=True)
    first = record["chatbot"]["messages"][0]["content"]
    assert first[0] == "airudder.OtherContent"
    assert first[1][UNMAPPED] == {"pack": '{"id":7}'}
    assert through_avro("chatbot", data) == data
    assert through_avro("chatbot", data, record_names=False) == data


def test_a_union_read_without_record_names_is_resolved_by_its_fields_then_its_type() -> None:
    # Two branches with the same field names (as text and button content) but fields of
    # different types: the rebuild must take the branch the writer took, told by `type`.
    inner = branch("Inner", [], ["null", "string"])
    content = [
        "null",
        branch("Count", ["count"], ["null", "long"]),
        branch("Nested", ["*"], ["null", inner]),
    ]
    schema = from_definition(
        {
            "type": "record",
            "name": "airudder.Holder",
            "fields": [
                {"name": "c", "type": content, "default": None},
                {"name": "unmapped", "type": {"type": "map", "values": "string"}, "default": {}},
            ],
        }
    )
    mapper = Mapper(schema)
    for data in (
        {"c": {"type": "count", "n": 5}},
        {"c": {"type": "nested", "n": {"n": "x", "extra": [1]}}},
        {"c": {"n": {"n": "x"}}},  # no type: the writer's fallback branch
    ):
        body = write(schema, data)
        assert rebuild(mapper, body, record_names=True) == data
        assert rebuild(mapper, body, record_names=False) == data


def branch(name: str, types: list[str], n: list[Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": f"airudder.{name}",
        "x-types": types,
        "fields": [
            {"name": "type", "type": ["null", "string"], "default": None},
            {"name": "n", "type": n, "default": None},
            {"name": "unmapped", "type": {"type": "map", "values": "string"}, "default": {}},
        ],
    }


def test_a_value_of_another_type_is_kept_in_unmapped() -> None:
    data = sample("call")
    data["call"]["slots"] = {"amount": 100, "date": None}
    data["call"]["talk_round"] = "3"
    data["timestamp"] = 1.5
    record = plain(MAPPERS["call"].to_record(data))
    assert record["call"].get("slots") is None
    assert record["call"][UNMAPPED] == {"slots": '{"amount":100,"date":null}', "talk_round": '"3"'}
    assert record[UNMAPPED] == {"timestamp": "1.5"}
    assert through_avro("call", data) == data


def test_a_number_where_a_string_is_expected_is_typed_and_kept_exactly() -> None:
    data = sample("call")
    data["callee"]["case_id"] = 12345
    record = plain(MAPPERS["call"].to_record(data))
    assert record["callee"]["case_id"] == "12345"
    assert record["callee"][UNMAPPED] == {"case_id": "12345"}
    assert through_avro("call", data) == data


def test_null_and_absent_are_told_apart() -> None:
    data = sample("call")
    data["call"]["asr_ptp"] = None
    del data["call"]["intention"]
    rebuilt = through_avro("call", data)
    assert rebuilt["call"]["asr_ptp"] is None
    assert "intention" not in rebuilt["call"]


def test_unknown_members_at_any_depth_round_trip() -> None:
    data = sample("call")
    data["new_top"] = [1, {"x": True}]
    data["call"]["asr_result"][0]["confidence"] = 0.93
    data["callee"]["extend"]["variables"]["n"] = 5  # a map that no longer fits: kept whole
    data["unmapped"] = "a vendor field that happens to share our name"
    assert through_avro("call", data) == data


# --- property: random additions, removals and type changes round-trip unchanged -------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_random_changes_to_the_example_round_trip_unchanged(
    case: tuple[str, dict[str, Any]], record_names: bool
) -> None:
    kind, data = case
    assert through_avro(kind, data, record_names=record_names) == data


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.sampled_from(KINDS))
def test_any_json_object_round_trips(data: dict[str, Any], kind: str) -> None:
    assert through_avro(kind, data) == data
