from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from bridge.codec.schemas import default_schema_dir, load_schemas
from bridge.errors import ConfigError
from bridge.schema_tools import check_schemas, list_schemas, register_schemas, snapshot
from bridge.settings import load_settings
from tests.conftest import RunningRegistry

SCHEMAS = load_schemas()


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
