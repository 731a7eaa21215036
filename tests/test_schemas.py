from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.codec.mapping import UNMAPPED
from bridge.codec.schemas import (
    RECORD_NAMES,
    declarations,
    default_schema_dir,
    load_schemas,
    read_definitions,
)
from bridge.errors import ConfigError

SCHEMAS = load_schemas()


def records(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "record":
            found.append(node)
        for value in node.values():
            found.extend(records(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(records(item))
    return found


@pytest.mark.parametrize("kind", sorted(RECORD_NAMES))
def test_every_record_documents_its_fields_and_keeps_what_does_not_fit(kind: str) -> None:
    for record in records(SCHEMAS[kind].definition):
        assert record.get("doc"), record["name"]
        names = [f["name"] for f in record["fields"]]
        assert names[-1] == UNMAPPED, record["name"]
        assert len(names) == len(set(names)), record["name"]
        for field in record["fields"]:
            assert field.get("doc"), f"{record['name']}.{field['name']}"
            assert "default" in field, f"{record['name']}.{field['name']} needs a default"


def test_the_three_types_share_the_envelope() -> None:
    shapes = {
        kind: [(f["name"], orjson.dumps(f["type"])) for f in SCHEMAS[kind].definition["fields"]]
        for kind in RECORD_NAMES
    }
    assert shapes["call"] == shapes["waba_template"] == shapes["chatbot"]
    assert len({s.fingerprint for s in SCHEMAS.values()}) == 3  # yet distinct records


def test_named_types_are_defined_once_and_shared() -> None:
    chatbot = SCHEMAS["chatbot"].definition
    names = [r["name"] for r in records(chatbot)]
    assert len(names) == len(set(names))
    assert "airudder.Callee" in names
    assert "airudder.ChatMessage" in names


def test_the_packaged_schema_directory_is_the_repository_avro_folder() -> None:
    assert default_schema_dir().resolve() == (Path(__file__).parent.parent / "avro").resolve()


def test_a_misnamed_schema_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "airudder.Wrong.avsc").write_text(
        '{"type": "record", "name": "Right", "namespace": "airudder", "fields": []}'
    )
    with pytest.raises(ConfigError, match=r"name the file airudder\.Right\.avsc"):
        read_definitions(tmp_path)


def test_missing_schemas_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no notification type declared"):
        load_schemas(tmp_path)


def test_a_type_is_declared_by_its_schema_and_the_declaration_is_not_the_contract() -> None:
    declared = declarations()
    assert list(declared) == list(RECORD_NAMES) == ["call", "chatbot", "waba_template"]
    assert declared["waba_template"].event_id == (
        ("waba_template", "msg_id"),
        ("waba_template", "status"),
    )
    assert SCHEMAS["call"].event_id == (("call", "call_id"),)
    assert "x-notification" not in SCHEMAS["call"].definition
    assert "x-notification" not in SCHEMAS["call"].canonical


@pytest.mark.parametrize(
    ("declaration", "said"),
    [
        ({"type": "dlq"}, "must be a lower-case name, not dlq"),
        ({"type": "Task End"}, "must be a lower-case name"),
        ({"type": "task_end", "event-id": "task_end.id"}, "must be a list of dotted member"),
        ({"type": "task_end", "event-id": ["task_end..id"]}, "must be a list of dotted member"),
        ({"type": "call"}, "type 'call' declared twice"),
        ("task_end", "must be an object"),
    ],
)
def test_a_bad_declaration_is_refused_in_one_line(
    declaration: object, said: str, tmp_path: Path
) -> None:
    folder = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), folder)
    (folder / "airudder.Other.avsc").write_bytes(
        orjson.dumps(
            {"type": "record", "name": "Other", "namespace": "airudder",
             "x-notification": declaration, "fields": []}
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_schemas(folder)
