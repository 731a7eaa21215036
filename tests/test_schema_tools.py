"""`bridge schemas list|check|register|snapshot`: offline and against a registry. Against a
registry, its verdict and bridge's own check of the versions it compares with, naming the field
even when the registry gives no reason; and why it is the guard (a newer incompatible version
does not stop `bridge serve`)."""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from bridge.codec.encode import confluent_id
from bridge.codec.registry import SchemaRegistry, subjects
from bridge.codec.schemas import Schema, default_schema_dir, from_definition, load_schemas
from bridge.commands.schema_tools import check_schemas, list_schemas, register_schemas, snapshot
from bridge.errors import ConfigError
from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import Settings, load_settings
from tests.helpers import NEW_TYPE, RunningRegistry, sample_bytes, schema_dir_with_new_type

SCHEMAS = load_schemas()
SUBJECT = "airudder.chatbot-value"
# What bridge's check says of today's chatbot schema against `older(...)` below.
BROKEN = (
    "new schema cannot read old data: chatbot.messages[].msg_id: no branch of [null, string] "
    "reads boolean"
)


def older() -> Schema:
    """An earlier chatbot schema today's cannot read: message ids were booleans."""
    definition = copy.deepcopy(SCHEMAS["chatbot"].definition)
    message = find(definition, "airudder.ChatMessage")
    [msg_id] = [f for f in message["fields"] if f["name"] == "msg_id"]
    msg_id["type"] = ["null", "boolean"]
    return from_definition(definition)


def find(node: Any, name: str) -> dict[str, Any]:
    if isinstance(node, dict):
        if node.get("name") == name and node.get("type") == "record":
            return node
        children: list[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        children = []
    for child in children:
        try:
            return find(child, name)
        except LookupError:
            pass
    raise LookupError(name)


@pytest.fixture
def settings(schema_registry: RunningRegistry) -> Settings:
    return load_settings(schema_registry_url=schema_registry.url)


async def register(settings: Settings, *schemas: Schema) -> None:
    registry = SchemaRegistry(settings)
    try:
        for schema in schemas:
            await registry.register(SUBJECT, schema)
    finally:
        await registry.close()


def registry_failures(failures: list[str]) -> list[str]:
    return [f for f in failures if "registry" in f]


@pytest.mark.parametrize("ignores_verbose", [False, True], ids=["verbose", "karapace-like"])
async def test_the_incompatible_field_is_named_whatever_the_registry_answers(
    schema_registry: RunningRegistry, settings: Settings, *, ignores_verbose: bool
) -> None:
    schema_registry.state.ignores_verbose = ignores_verbose
    await register(settings, older())
    report = await check_schemas(settings, "BACKWARD")
    verdict, *ours = registry_failures(report.failures)
    assert verdict.startswith(f"chatbot: the registry's {SUBJECT} answers incompatible: ")
    if ignores_verbose:
        assert verdict.endswith(": no reason given")
    else:  # the double's reasons are bridge's own, so they name the field too
        assert "chatbot.messages[].msg_id" in verdict
    assert ours == [f"chatbot: against the registry's {SUBJECT} version 1: {BROKEN}"]
    assert (
        f"chatbot: registry subject {SUBJECT} version 1 (BACKWARD): the registry answers "
        "incompatible"
    ) in report.checked
    # The other types' subjects hold nothing: nothing to compare, nothing failed.
    assert "call: registry subject airudder.call-value: nothing registered yet" in report.checked


async def test_a_compatible_latest_version_passes(
    schema_registry: RunningRegistry, settings: Settings
) -> None:
    schema_registry.state.ignores_verbose = True
    await register(settings, SCHEMAS["chatbot"])
    report = await check_schemas(settings, "BACKWARD")
    assert report.failures == []
    assert (
        f"chatbot: registry subject {SUBJECT} version 1 (BACKWARD): the registry answers compatible"
    ) in report.checked


async def test_a_transitive_level_compares_every_registered_version(
    schema_registry: RunningRegistry, settings: Settings
) -> None:
    schema_registry.state.ignores_verbose = True
    schema_registry.state.config[SUBJECT] = "NONE"  # to register both versions
    await register(settings, older(), SCHEMAS["chatbot"])  # version 2 is today's schema
    registry = schema_registry.state
    registry.config[SUBJECT] = "BACKWARD"  # only the latest: compatible
    assert registry_failures((await check_schemas(settings, "BACKWARD")).failures) == []

    registry.config[SUBJECT] = "BACKWARD_TRANSITIVE"
    report = await check_schemas(settings, "BACKWARD")
    assert registry_failures(report.failures) == [
        f"chatbot: the registry's {SUBJECT} answers incompatible: no reason given",
        f"chatbot: against the registry's {SUBJECT} version 1: {BROKEN}",
    ]
    assert (
        f"chatbot: registry subject {SUBJECT} version 1, 2 (BACKWARD_TRANSITIVE): the registry "
        "answers incompatible"
    ) in report.checked


async def test_a_newer_incompatible_latest_leaves_serve_writing_its_own_version_and_fails_check(
    schema_registry: RunningRegistry, settings: Settings, tmp_path: Path
) -> None:
    registry = SchemaRegistry(settings)
    try:
        ids = {
            kind: await registry.register(subject, SCHEMAS[kind])
            for kind, subject in subjects(settings, SCHEMAS).items()
        }
    finally:
        await registry.close()
    schema_registry.state.config[SUBJECT] = "NONE"  # someone registers an incompatible version
    await register(settings, older())
    schema_registry.state.config[SUBJECT] = "BACKWARD"
    newer = schema_registry.state.subjects[SUBJECT][-1]
    assert newer != ids["chatbot"]

    serving = settings.model_copy(update={"schema_registration": "lookup", "spool_dir": tmp_path})
    publisher = MemoryPublisher()
    with TestClient(create_app(serving, publisher)) as app:  # starts: its own schema is found
        assert app.post(WEBHOOK_PATH, content=sample_bytes("chatbot")).status_code == 200
    [message] = publisher.topics["airudder.chatbot"]
    assert confluent_id(message.value) == ids["chatbot"]  # the version bridge was released with

    failures = registry_failures((await check_schemas(settings, "BACKWARD")).failures)
    assert f"chatbot: against the registry's {SUBJECT} version 2: {BROKEN}" in failures


async def test_list_shows_each_type_with_subject_and_fingerprint_and_no_id_offline() -> None:
    out = io.StringIO()
    await list_schemas(load_settings(topic_prefix="x."), out, as_json=True)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [
        {
            "type": kind,
            "schema": schema.fullname,
            "subject": f"x.{kind}-value",
            "fingerprint": schema.fingerprint.hex(),
            "registry_id": None,
        }
        for kind, schema in SCHEMAS.items()
    ]
    table = io.StringIO()
    await list_schemas(load_settings(), table, as_json=False)
    header, *lines = table.getvalue().splitlines()
    assert header.split() == ["TYPE", "SCHEMA", "SUBJECT", "FINGERPRINT", "ID"]
    assert [line.split()[0] for line in lines] == list(SCHEMAS)
    assert all(line.split()[-1] == "-" for line in lines)  # not registered: no id


async def test_register_then_list_shows_the_registrys_ids(
    schema_registry: RunningRegistry,
) -> None:
    settings = load_settings(schema_registry_url=schema_registry.url)
    registered = await register_schemas(settings)
    assert {kind: subject for kind, (subject, _) in registered.items()} == {
        kind: f"airudder.{kind}-value" for kind in SCHEMAS
    }
    out = io.StringIO()
    await list_schemas(settings, out, as_json=True)
    ids = {row["type"]: row["registry_id"] for row in map(json.loads, out.getvalue().splitlines())}
    assert ids == {kind: schema_id for kind, (_, schema_id) in registered.items()}


async def test_register_needs_a_registry() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_SCHEMA_REGISTRY_URL"):
        await register_schemas(load_settings())


async def test_check_names_the_field_that_breaks_compatibility(tmp_path: Path) -> None:
    schemas = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), schemas)
    path = schemas / "airudder.CallNotification.avsc"
    definition = json.loads(path.read_text())
    definition["fields"].append({"name": "required_now", "type": "string"})  # no default
    path.write_text(json.dumps(definition))
    report = await check_schemas(load_settings(), "BACKWARD", schemas)
    assert report.checked
    assert report.failures
    assert all(f.startswith("call: against v") for f in report.failures)
    assert all("required_now: new field without a default" in f for f in report.failures)
    assert not (await check_schemas(load_settings(), "FORWARD", schemas)).failures


def test_snapshot_keeps_a_changed_schema_as_the_next_version_only_once(tmp_path: Path) -> None:
    schemas = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), schemas)
    assert snapshot(schemas) == []  # the committed history is up to date
    path = schemas / "airudder.ChatbotNotification.avsc"
    definition = json.loads(path.read_text())
    definition["fields"].append({"name": "later", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(definition))
    [written] = snapshot(schemas)
    versions = sorted((schemas / "history" / "chatbot").glob("v*.avsc"))
    assert written == versions[-1]
    assert written.name == f"v{len(versions)}.avsc"
    assert snapshot(schemas) == []


async def test_a_new_type_is_checked_and_kept_without_other_edits(tmp_path: Path) -> None:
    schemas = schema_dir_with_new_type(tmp_path)
    report = await check_schemas(load_settings(schema_dir=schemas), "BACKWARD")
    assert report.failures == []
    assert f"{NEW_TYPE}: a new type, no version kept yet (`bridge schemas snapshot` keeps v1)" in (
        report.checked
    )
    [written] = snapshot(schemas)
    assert written == schemas / "history" / NEW_TYPE / "v1.avsc"
    kept = orjson.loads(written.read_bytes())
    assert kept["name"] == "airudder.TaskEndNotification"
    assert "x-notification" not in kept  # bridge's declaration, not the contract
    report = await check_schemas(load_settings(schema_dir=schemas), "FULL")
    assert f"{NEW_TYPE}: v1 (FULL)" in report.checked


async def test_an_event_id_rule_that_names_no_string_field_fails_the_check(
    tmp_path: Path,
) -> None:
    schemas = schema_dir_with_new_type(tmp_path)
    path = schemas / "airudder.TaskEndNotification.avsc"
    schema = orjson.loads(path.read_bytes())
    schema["x-notification"]["event-id"] = ["task_end.task_id", "task_end.calls", "task_end.nope"]
    path.write_bytes(orjson.dumps(schema))
    report = await check_schemas(load_settings(), "BACKWARD", schemas)
    assert report.failures == [
        f"{NEW_TYPE}: x-notification event-id task_end.calls: not a string field",
        f"{NEW_TYPE}: x-notification event-id task_end.nope: not a string field",
    ]
