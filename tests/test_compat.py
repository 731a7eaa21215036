"""The offline compatibility rules (Avro specification, "Schema Resolution")."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.codec.compat import can_read, problems


def record(
    *fields: dict[str, Any], name: str = "R", aliases: list[str] | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "record", "name": name, "fields": list(fields)}
    if aliases:
        schema["aliases"] = aliases
    return schema


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("int", "long"),
        ("int", "double"),
        ("long", "float"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    ],
)
def test_promotions_are_readable(writer: str, reader: str) -> None:
    assert can_read(reader, writer) == []


@pytest.mark.parametrize(
    ("writer", "reader"), [("long", "int"), ("double", "float"), ("string", "long")]
)
def test_narrowing_is_not(writer: str, reader: str) -> None:
    assert can_read(reader, writer) != []


def test_a_new_field_needs_a_default() -> None:
    old = record({"name": "a", "type": "string"})
    new = record({"name": "a", "type": "string"}, {"name": "b", "type": "long"})
    assert can_read(new, old) == ["b: new field without a default"]
    defaulted = record({"name": "a", "type": "string"}, {"name": "b", "type": "long", "default": 0})
    assert problems(defaulted, old, "FULL") == []


def test_a_renamed_field_is_found_by_its_alias() -> None:
    old = record({"name": "robot_id", "type": "string"})
    new = record({"name": "bot_id", "type": "string", "aliases": ["robot_id"]})
    assert can_read(new, old) == []
    assert can_read(record({"name": "bot_id", "type": "string"}), old) != []


def test_a_renamed_record_is_found_by_its_alias() -> None:
    old = record({"name": "a", "type": "string"}, name="Old")
    assert can_read(record({"name": "a", "type": "string"}, name="New", aliases=["Old"]), old) == []
    assert can_read(record({"name": "a", "type": "string"}, name="New"), old) != []


def test_unions_every_written_branch_must_be_readable() -> None:
    assert can_read(["null", "string"], "string") == []
    assert can_read("string", ["null", "string"]) == ["<root>: null cannot be read as string"]
    assert can_read(["null", "long"], ["null", "int"]) == []


def test_enums_need_the_writers_symbols_or_a_default() -> None:
    old = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    assert can_read({"type": "enum", "name": "E", "symbols": ["A"]}, old) != []
    assert can_read({"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}, old) == []


def test_recursive_types_terminate() -> None:
    node = record(
        {"name": "value", "type": "string"},
        {"name": "next", "type": ["null", "R"], "default": None},
    )
    assert can_read(node, node) == []


def test_nested_paths_name_the_field() -> None:
    old = record(
        {
            "name": "items",
            "type": {"type": "array", "items": record({"name": "n", "type": "long"}, name="I")},
        }
    )
    new = record(
        {
            "name": "items",
            "type": {"type": "array", "items": record({"name": "n", "type": "string"}, name="I")},
        }
    )
    assert can_read(new, old) == ["items[].n: long cannot be read as string"]
