"""The Java consumer example (`examples/java`), built with Maven from Maven Central alone and run
against the real broker on records bridge wrote: Avro's own Java implementation decodes our
framings, checks our fingerprints and reads our history schemas, and its rebuilt notifications
equal the Python rebuild (`bridge tail --format json`'s `notification`)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from bridge.codec.encode import CONFLUENT_MAGIC, MAGIC
from bridge.codec.registry import SchemaRegistry
from bridge.codec.schemas import (
    build,
    default_schema_dir,
    load_history,
    load_schemas,
    read_definitions,
)
from bridge.commands.tail import Decoder
from bridge.notifications.routing import topic_for
from bridge.settings import Settings
from tests.helpers import RunningRegistry, consume, run_server, run_sync, sample

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "java"
JAR = PROJECT / "target" / "airudder-case-history.jar"
KINDS = ("call", "waba_template", "chatbot")
CASE = "12345.0"

# Maven fetches the dependencies once into its own cache (~/.m2), slow on a first run. One
# pytest-xdist worker runs the module: one `mvn package` into examples/java/target at a time.
pytestmark = [
    pytest.mark.process,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("java-example"),
]


@pytest.fixture(scope="session")
def case_history_jar() -> Path:
    """`mvn package` of the example, once per session; the build stays in examples/java/target."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        reason = f"the Java example needs {' and '.join(missing)} on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run it)")
        pytest.skip(reason)
    result = subprocess.run(
        ["mvn", "-q", "-B", "package"], cwd=PROJECT, capture_output=True, text=True, timeout=540,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"mvn package failed in {PROJECT}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return JAR


def run_jar(jar: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    """One JVM: every line it prints, parsed, and what it said on stderr."""
    result = subprocess.run(
        ["java", "-jar", str(jar), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    return [orjson.loads(line) for line in result.stdout.splitlines()], result.stderr


def notifications() -> Iterator[dict[str, Any]]:
    """The three samples, a call that exercises every `unmapped` rule, and another case's call
    (which the case-id filter must leave out)."""
    yield from (sample(kind) for kind in KINDS)
    odd = sample("call")
    odd["call"]["call_id"] = "odd-call"  # another event id, so not a duplicate
    odd["timestamp"] = "1744699269"  # a string where a long is typed
    odd["node_id"] = None  # JSON null
    odd["custom_attribute"] = {"a": 1, "b": "2"}  # a map whose entries do not all fit
    odd["call"]["robot_id"] = 4496  # a number where a string is typed: kept twice
    odd["call"]["talk_round"] = 1.5  # a double where a long is typed
    odd["call"]["ring_time"] = 2**63 - 1
    odd["callee"]["callee_name"] = "Zoë ✓ 日本"
    odd["x_added_by_vendor"] = {"nested": [1, 2.5, 1e-7, None, True, "s", {"k": []}]}
    yield odd
    other = copy.deepcopy(sample("call"))
    other["call"]["call_id"] = "other-case-call"
    other["callee"]["case_id"] = "other-case"
    yield other


def post_all(settings: Settings) -> None:
    servers = run_server(settings)
    running = next(servers)
    try:
        for notification in notifications():
            response = httpx2.post(
                f"{running.url}/webhooks/airudder", content=orjson.dumps(notification), timeout=30
            )
            assert response.status_code == 200, response.text
    finally:
        with pytest.raises(StopIteration):
            next(servers)


def python_rebuild(settings: Settings, magic: bytes) -> list[dict[str, Any]]:
    """What `bridge tail --format json --case-id CASE` prints as `notification`, per record."""
    return run_sync(_python_rebuild(settings, magic))


async def _python_rebuild(settings: Settings, magic: bytes) -> list[dict[str, Any]]:
    topics = [topic_for(settings.topic_prefix, kind) for kind in KINDS]
    records = await consume(settings.kafka_bootstrap_servers, topics, idle=1.5)
    assert {record.value[: len(magic)] for record in records} == {magic}  # the framing tested
    registry = SchemaRegistry(settings) if settings.schema_registry_url else None
    decoder = Decoder(registry=registry)
    rebuilt = []
    try:
        for record in records:
            if record.key == CASE.encode():
                await decoder.learn(record.value)
                rebuilt.append(decoder.document(record)["notification"])
    finally:
        if registry is not None:
            await registry.close()
    return rebuilt


def by_type(rebuilt: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    # Each type is one topic, a case one partition of it: the order within a type is kept.
    out: dict[str, list[dict[str, Any]]] = {}
    for notification in rebuilt:
        out.setdefault(notification["type"], []).append(notification)
    return out


def java_args(settings: Settings, *extra: str) -> list[str]:
    topics = ",".join(topic_for(settings.topic_prefix, kind) for kind in KINDS)
    return [
        "--bootstrap-servers", settings.kafka_bootstrap_servers, "--topics", topics,
        "--case-id", CASE, "--until-idle", "4", *extra,
    ]  # fmt: skip


def sent() -> dict[str, list[dict[str, Any]]]:
    return by_type([n for n in notifications() if n["callee"]["case_id"] == CASE])


def test_java_fingerprints_equal_ours(case_history_jar: Path) -> None:
    """Avro's Java implementation fingerprints every file of avro/ and avro/history/ as we do."""
    schema_dir = default_schema_dir()
    listed, _ = run_jar(case_history_jar, "--list-schemas", "--schema-dir", str(schema_dir))
    java = {Path(line["file"]).relative_to(schema_dir).as_posix(): line for line in listed}
    definitions = read_definitions(schema_dir)
    ours = {f"{name}.avsc": (name, build(name, definitions).fingerprint) for name in definitions}
    for kind, versions in load_history(schema_dir).items():
        for version, schema in versions:
            ours[f"history/{kind}/{version}.avsc"] = (schema.fullname, schema.fingerprint)
    assert {
        f: (line["name"], bytes.fromhex(line["fingerprint"])) for f, line in java.items()
    } == ours


def evolved_schema_dir(tmp_path: Path) -> Path:
    """avro/ with a field added (with a default) to the shared Callee: every current schema then
    differs from what bridge writes, which only avro/history/ still has."""
    directory = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), directory)
    callee_file = directory / "airudder.Callee.avsc"
    callee = orjson.loads(callee_file.read_bytes())
    added = {"name": "added_later", "type": ["null", "string"], "default": None}
    callee["fields"].insert(len(callee["fields"]) - 1, added)
    callee_file.write_bytes(orjson.dumps(callee))
    current = {s.fingerprint for s in load_schemas(directory).values()}
    written = {s.fingerprint for s in load_schemas().values()}
    history = {s.fingerprint for versions in load_history(directory).values() for _, s in versions}
    assert not current & written
    assert written <= history
    return directory


@pytest.mark.kafka
def test_java_reads_single_object_encoding_through_the_history_schemas(
    case_history_jar: Path, kafka_settings: Settings, tmp_path: Path
) -> None:
    post_all(kafka_settings)
    python = python_rebuild(kafka_settings, MAGIC)
    assert by_type(python) == sent()
    # The writer schemas are found by fingerprint in avro/history/ alone and read as the
    # current (evolved) schemas by Avro's schema resolution.
    schema_dir = evolved_schema_dir(tmp_path)
    java, said = run_jar(
        case_history_jar, *java_args(kafka_settings, "--schema-dir", str(schema_dir))
    )
    assert by_type(java) == by_type(python), said


@pytest.mark.kafka
def test_java_reads_the_confluent_framing_with_the_schema_from_the_registry(
    case_history_jar: Path, kafka_settings: Settings, schema_registry: RunningRegistry
) -> None:
    settings = kafka_settings.model_copy(
        update={"schema_registry_url": schema_registry.url, "schema_registration": "auto"}
    )
    post_all(settings)
    python = python_rebuild(settings, CONFLUENT_MAGIC)
    assert by_type(python) == sent()
    asked = len(schema_registry.state.requests)
    java, said = run_jar(
        case_history_jar,
        *java_args(settings, "--registry", schema_registry.url, "--schema-dir", str(ROOT / "avro")),
    )
    assert by_type(java) == by_type(python), said
    fetched = [path for _, path, _ in schema_registry.state.requests[asked:]]
    assert sorted(fetched) == sorted(
        f"/schemas/ids/{ids[-1]}" for ids in schema_registry.state.subjects.values()
    )
