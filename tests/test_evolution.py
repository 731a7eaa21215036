"""Schema evolution: what was written with any published schema stays readable, and an
incompatible edit is caught before it ships."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from bridge.codec.mapping import Mapper
from bridge.codec.schemas import Schema, default_schema_dir, load_history, load_schemas
from bridge.commands.schema_tools import check_schemas, snapshot
from bridge.settings import load_settings
from tests.helpers import sample

CURRENT = load_schemas()
HISTORY = load_history()
VERSIONS = [(kind, version, schema) for kind, vs in HISTORY.items() for version, schema in vs]


def resolve(record: dict[str, Any], writer: Schema, reader: Schema) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer.parsed, record)
    buffer.seek(0)
    result: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
        buffer, writer.parsed, reader.parsed, return_record_name=True,
        return_record_name_override=True,
    )  # fmt: skip
    return result


def test_every_type_has_a_published_history() -> None:
    assert set(HISTORY) == set(CURRENT)
    assert all(versions for versions in HISTORY.values())


@pytest.mark.parametrize(("kind", "version", "old"), VERSIONS)
def test_records_written_with_each_published_schema_are_read_with_the_current_one(
    kind: str, version: str, old: Schema
) -> None:
    record = Mapper(old).to_record(sample(kind))
    assert Mapper(CURRENT[kind]).to_notification(resolve(record, old, CURRENT[kind])) == (
        sample(kind)
    )


@pytest.mark.parametrize(("kind", "version", "old"), VERSIONS)
def test_records_written_now_are_read_with_each_published_schema(
    kind: str, version: str, old: Schema
) -> None:
    record = Mapper(CURRENT[kind]).to_record(sample(kind))
    assert Mapper(old).to_notification(resolve(record, CURRENT[kind], old)) == sample(kind)


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), copy)
    return copy


def edit(schema_dir: Path, file: str, field: str, change: dict[str, Any]) -> None:
    path = schema_dir / file
    definition = json.loads(path.read_text())
    for f in definition["fields"]:
        if f["name"] == field:
            f.update(change)
    path.write_text(json.dumps(definition))


async def test_todays_schemas_pass_the_check() -> None:
    report = await check_schemas(load_settings(), "FULL")
    assert report.failures == []
    assert len(report.checked) == len(VERSIONS)


async def test_an_incompatible_edit_is_caught_naming_the_field(schema_dir: Path) -> None:
    edit(schema_dir, "airudder.Call.avsc", "call_times", {"type": ["null", "string"]})
    report = await check_schemas(load_settings(), "BACKWARD", schema_dir)
    assert report.failures
    assert all("call.call_times" in f for f in report.failures)
    assert "long cannot be read as" in report.failures[0] or "reads long" in report.failures[0]


async def test_a_field_added_with_a_default_is_compatible_both_ways(schema_dir: Path) -> None:
    path = schema_dir / "airudder.WabaTemplate.avsc"
    definition = json.loads(path.read_text())
    definition["fields"].insert(
        -1, {"name": "error_code", "type": ["null", "string"], "default": None, "doc": "new"}
    )
    path.write_text(json.dumps(definition))
    assert (await check_schemas(load_settings(), "FULL", schema_dir)).failures == []
    # WabaTemplate is shared: each type's schema has a new version
    assert snapshot(schema_dir) == [
        schema_dir / "history" / kind / "v2.avsc" for kind in ("call", "chatbot", "waba_template")
    ]
    assert snapshot(schema_dir) == []  # nothing changed since


async def test_a_field_added_without_a_default_breaks_backward(schema_dir: Path) -> None:
    path = schema_dir / "airudder.Chatbot.avsc"
    definition = json.loads(path.read_text())
    definition["fields"].insert(0, {"name": "tenant", "type": "string", "doc": "new"})
    path.write_text(json.dumps(definition))
    report = await check_schemas(load_settings(), "BACKWARD", schema_dir)
    assert report.failures == [  # Chatbot is shared by the three types' schemas
        f"{kind}: against v1: new schema cannot read old data: chatbot.tenant: "
        "new field without a default"
        for kind in ("call", "chatbot", "waba_template")
    ]
    assert (await check_schemas(load_settings(), "FORWARD", schema_dir)).failures == []


@pytest.mark.process
def test_the_cli_fails_a_ci_pipeline_on_an_incompatible_edit(schema_dir: Path) -> None:
    edit(schema_dir, "airudder.Callee.avsc", "case_id", {"type": "long", "default": 0})
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "schemas", "check", "--schema-dir", str(schema_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "callee.case_id" in result.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "bridge", "schemas", "check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "compatible (BACKWARD)" in ok.stdout


async def test_the_check_asks_the_registry_too(schema_registry: Any, tmp_path: Path) -> None:
    from bridge.codec.registry import SchemaRegistry  # noqa: PLC0415

    settings = load_settings(schema_registry_url=schema_registry.url)
    registry = SchemaRegistry(settings)
    await registry.register("airudder.call-value", CURRENT["chatbot"])  # something else
    await registry.close()
    report = await check_schemas(settings, "BACKWARD")
    assert [f for f in report.failures if "registry" in f]
    assert "airudder.call-value" in report.failures[0]
