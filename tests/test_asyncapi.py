"""asyncapi.yaml is generated from the schemas and agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import yaml

from bridge.codec.schemas import RECORD_NAMES, load_schemas
from bridge.notifications import parse
from bridge.notifications.asyncapi import DEAD_LETTER_REASONS, document
from bridge.notifications.parse import parse_notification
from bridge.notifications.routing import REDRIVEN_FROM, all_topics, dead_letter_headers, headers_for
from bridge.settings import Settings
from tests.helpers import NEW_TYPE, sample_bytes, schema_dir_with_new_type

ROOT = Path(__file__).resolve().parent.parent
DOC = yaml.safe_load((ROOT / "asyncapi.yaml").read_text())
PREFIX = Settings.model_fields["topic_prefix"].default


def test_the_document_is_the_one_generated_from_the_schemas() -> None:
    assert document() == DOC, "regenerate with `make docs`"


def test_a_type_added_by_its_schema_file_is_in_the_document(tmp_path: Path) -> None:
    generated = document(schema_dir_with_new_type(tmp_path))
    channel = generated["channels"][NEW_TYPE]
    assert channel["address"] == f"{PREFIX}{NEW_TYPE}"
    [ref] = channel["messages"].values()
    message = generated["components"]["messages"][ref["$ref"].rpartition("/")[2]]
    assert message["payload"]["schema"]["$ref"] == "./avro/airudder.TaskEndNotification.avsc"
    headers = generated["components"]["messageTraits"]["notification"]["headers"]
    assert NEW_TYPE in headers["properties"]["notification-type"]["enum"]
    assert f"{NEW_TYPE}:<task_end.task_id>" in headers["properties"]["event-id"]["description"]
    assert f"publish{'TaskEnd'}" in generated["operations"]
    assert NEW_TYPE not in DOC["channels"]


def test_one_channel_per_topic() -> None:
    assert DOC["asyncapi"].startswith("3.")
    addresses = sorted(c["address"] for c in DOC["channels"].values())
    assert addresses == sorted(all_topics(PREFIX))


def test_payloads_reference_the_schema_of_each_type() -> None:
    schemas = load_schemas()
    for kind in RECORD_NAMES:
        [ref] = DOC["channels"][kind]["messages"].values()
        message = DOC["components"]["messages"][ref["$ref"].rpartition("/")[2]]
        path = ROOT / message["payload"]["schema"]["$ref"]
        assert path.is_file()
        name = orjson.loads(path.read_bytes())["name"]
        assert f"airudder.{name}" == schemas[kind].fullname


def test_headers_are_the_ones_bridge_writes() -> None:
    trait = DOC["components"]["messageTraits"]["notification"]["headers"]
    notification = parse_notification(sample_bytes())
    written = {k for k, _ in headers_for(notification, load_schemas()["call"], 0)}
    assert written == set(trait["required"])
    assert set(trait["properties"]) == written | {REDRIVEN_FROM}  # only on re-driven records
    dead = DOC["components"]["messages"]["deadLetter"]["headers"]
    assert {k for k, _ in dead_letter_headers("x", "", "", b"", 0)} == set(dead["properties"])


def test_every_dead_letter_reason_in_the_code_is_documented() -> None:
    sources = "".join(p.read_text() for p in (ROOT / "bridge").rglob("*.py"))
    reasons = set(re.findall(r'InvalidNotification\(\s*"([a-z-]+)"', sources))
    reasons |= set(re.findall(r'reason = "([a-z-]+)" if', sources))
    reasons |= set(re.findall(r'else "([a-z-]+)"\n', sources)) & {"not-json"}
    documented = set(
        DOC["components"]["messages"]["deadLetter"]["headers"]["properties"]["dlq-reason"]["enum"]
    )
    codec_only = {"not-avro", "unknown-schema", "unknown-schema-id"}  # read side, never a DLQ
    assert reasons - codec_only == documented == set(DEAD_LETTER_REASONS)
    assert (
        tuple(
            DOC["components"]["messageTraits"]["notification"]["headers"]["properties"][
                "notification-type"
            ]["enum"]
        )
        == parse.TYPES
    )
