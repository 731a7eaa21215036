"""The registry client against the test double, over real HTTP; the Confluent wire format;
and Confluent's own deserializer reading what we write."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from starlette.testclient import TestClient

from bridge.codec.encode import confluent_id
from bridge.codec.mapping import Mapper
from bridge.codec.registry import (
    CONTENT_TYPE,
    SchemaRegistry,
    registered_schema,
    subject_for,
    subjects,
)
from bridge.codec.schemas import load_schemas
from bridge.commands.tail import Decoder
from bridge.errors import ConfigError, RegistryError
from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.http.ports import free_port
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import Settings, load_settings
from tests.helpers import Broker, RunningRegistry, sample, sample_bytes, serve_in_thread
from tests.registry_double import Registry

SCHEMAS = load_schemas()


@pytest.fixture
def registry_settings(schema_registry: RunningRegistry, tmp_path: Path) -> Settings:
    return load_settings(
        schema_registry_url=schema_registry.url, spool_dir=tmp_path, schema_registration="auto"
    )


@pytest.fixture
async def client(registry_settings: Settings) -> AsyncIterator[SchemaRegistry]:
    registry = SchemaRegistry(registry_settings)
    yield registry
    await registry.close()


def test_subjects_follow_the_confluent_strategies() -> None:
    assert subject_for("topic", "airudder.call", "airudder.CallNotification") == (
        "airudder.call-value"
    )
    assert subject_for("record", "airudder.call", "airudder.CallNotification") == (
        "airudder.CallNotification"
    )
    assert subject_for("topic_record", "airudder.call", "airudder.CallNotification") == (
        "airudder.call-airudder.CallNotification"
    )
    names = subjects(load_settings(schema_subject_strategy="record"), SCHEMAS)
    assert names["chatbot"] == "airudder.ChatbotNotification"


async def test_register_lookup_and_fetch_by_id(
    client: SchemaRegistry, schema_registry: RunningRegistry
) -> None:
    call = SCHEMAS["call"]
    assert await client.lookup("airudder.call-value", call) is None  # 40401
    schema_id = await client.register("airudder.call-value", call)
    assert await client.register("airudder.call-value", call) == schema_id  # idempotent
    assert await client.lookup("airudder.call-value", call) == schema_id
    assert await client.lookup("airudder.call-value", SCHEMAS["chatbot"]) is None  # 40403
    fetched = await client.schema_by_id(schema_id)
    assert fetched.fingerprint == call.fingerprint
    assert await client.check() is None
    assert {ctype for _, _, ctype in schema_registry.state.requests if ctype} == {CONTENT_TYPE}


async def test_compatibility_is_asked_of_the_registry(client: SchemaRegistry) -> None:
    call = SCHEMAS["call"]
    assert await client.compatible("airudder.call-value", call) == (None, [])  # no subject yet
    await client.register("airudder.call-value", call)
    assert await client.compatible("airudder.call-value", call) == (True, [])
    ok, reasons = await client.compatible("airudder.call-value", SCHEMAS["chatbot"])
    assert ok is False
    assert reasons
    assert await client.compatibility_level("airudder.call-value") == "BACKWARD"


async def test_a_subjects_versions_are_listed_and_fetched(client: SchemaRegistry) -> None:
    assert await client.versions("airudder.call-value") == []  # 40401
    await client.register("airudder.call-value", SCHEMAS["call"])
    assert await client.versions("airudder.call-value") == [1]
    fetched = await client.version("airudder.call-value", 1)
    assert fetched.fingerprint == SCHEMAS["call"].fingerprint
    assert fetched.definition == SCHEMAS["call"].definition  # our doc and x-types kept
    with pytest.raises(RegistryError, match="404") as raised:
        await client.version("airudder.call-value", 2)
    assert raised.value.error_code == 40402


def shortened(node: Any, namespace: str = "airudder") -> Any:
    """A schema as Avro's own libraries write it: names short, beside a `namespace`."""
    if isinstance(node, str):
        return node.removeprefix(f"{namespace}.")
    if isinstance(node, list):
        return [shortened(n, namespace) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: shortened(v, namespace) if k in {"type", "items", "values"} else v
           for k, v in node.items()}  # fmt: skip
    if "fields" in node:
        out["fields"] = [{**f, "type": shortened(f["type"], namespace)} for f in node["fields"]]
    if "name" in node and node.get("type") in {"record", "enum", "fixed"}:
        out["name"] = node["name"].removeprefix(f"{namespace}.")
    return out


def test_a_registered_schema_with_short_names_is_qualified() -> None:
    chatbot = SCHEMAS["chatbot"].definition
    short = {**shortened(chatbot), "namespace": "airudder"}
    assert "airudder." not in json.dumps(short)  # the test's own premise
    assert registered_schema(json.dumps(short)).definition == chatbot


async def test_basic_auth_is_sent(schema_registry: RunningRegistry, tmp_path: Path) -> None:
    schema_registry.state.users["bridge"] = "s3cret"
    anonymous = SchemaRegistry(load_settings(schema_registry_url=schema_registry.url))
    assert "401" in (await anonymous.check() or "")
    await anonymous.close()
    (tmp_path / "pw").write_text("s3cret\n")
    named = SchemaRegistry(
        load_settings(
            schema_registry_url=schema_registry.url,
            schema_registry_username="bridge",
            schema_registry_password_file=tmp_path / "pw",
        )
    )
    assert await named.check() is None
    await named.close()


def test_with_a_registry_values_are_in_confluent_wire_format_with_the_registered_id(
    registry_settings: Settings, schema_registry: RunningRegistry
) -> None:
    publisher = MemoryPublisher()
    with TestClient(create_app(registry_settings, publisher)) as app:
        assert app.post(WEBHOOK_PATH, content=sample_bytes()).status_code == 200
        assert app.get("/readyz").json()["checks"]["schema_registry"] == "ok"
    [message] = publisher.topics["airudder.call"]
    registered = schema_registry.state.subjects["airudder.call-value"][-1]
    assert message.value[0] == 0
    assert confluent_id(message.value) == registered

    # Confluent's own deserializer, against the registry over HTTP
    with SchemaRegistryClient({"url": schema_registry.url}) as confluent:
        deserialize = AvroDeserializer(confluent)
        decoded = deserialize(
            message.value, SerializationContext("airudder.call", MessageField.VALUE)
        )
    assert decoded["call"]["call_id"] == sample()["call"]["call_id"]
    assert decoded["call"]["asr_result"][0]["text"] == "no no no no no"
    assert decoded["callee"]["case_id"] == "12345.0"


def load_example() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "examples" / "python" / "consumer.py"
    spec = importlib.util.spec_from_file_location("python_consumer_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("record_names", [False, True], ids=["default", "return_record_name"])
def test_confluents_deserializer_output_rebuilds_the_notification(
    registry_settings: Settings, schema_registry: RunningRegistry, *, record_names: bool
) -> None:
    publisher = MemoryPublisher()
    with TestClient(create_app(registry_settings, publisher)) as app:
        assert app.post(WEBHOOK_PATH, content=sample_bytes("chatbot")).status_code == 200
    [message] = publisher.topics["airudder.chatbot"]
    with SchemaRegistryClient({"url": schema_registry.url}) as confluent:
        deserialize = AvroDeserializer(confluent, return_record_name=record_names)
        decoded = deserialize(
            message.value, SerializationContext("airudder.chatbot", MessageField.VALUE)
        )
    # The two shapes of a union of records: (name, record) only with return_record_name.
    chatbot = decoded["chatbot"][1] if record_names else decoded["chatbot"]
    content = chatbot["messages"][0]["content"]
    assert isinstance(content, tuple) is record_names
    assert Mapper(SCHEMAS["chatbot"]).to_notification(decoded) == sample("chatbot")
    assert load_example().rebuild(decoded) == sample("chatbot")


def test_a_registry_outage_alone_leaves_bridge_ready_but_degraded(tmp_path: Path) -> None:
    config = uvicorn.Config(
        Registry().app(), host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"
    )
    running = serve_in_thread(uvicorn.Server(config))
    settings = load_settings(
        schema_registry_url=next(running), spool_dir=tmp_path, schema_registration="auto"
    )
    with TestClient(create_app(settings, MemoryPublisher())) as app:
        assert app.get("/readyz").json() == {
            "status": "ready",
            "checks": {"kafka": "ok", "topics": "ok", "schema_registry": "ok", "spool": "ok"},
        }
        with pytest.raises(StopIteration):
            next(running)  # the registry stops
        ready = app.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert "unreachable" in ready.json()["checks"]["schema_registry"]
        assert ready.json()["checks"]["kafka"] == "ok"
        assert app.post(WEBHOOK_PATH, content=sample_bytes()).status_code == 200  # ids cached


def test_in_lookup_mode_an_unregistered_schema_refuses_the_start(
    registry_settings: Settings, schema_registry: RunningRegistry
) -> None:
    settings = registry_settings.model_copy(update={"schema_registration": "lookup"})
    with pytest.raises(ConfigError, match=r"not registered under subject airudder\.call-value"):  # noqa: SIM117
        with TestClient(create_app(settings, MemoryPublisher())):
            pass
    registry = SchemaRegistry(settings)

    async def register_all() -> None:
        for kind, subject in subjects(settings, SCHEMAS).items():
            await registry.register(subject, SCHEMAS[kind])
        await registry.close()

    asyncio.run(register_all())
    with TestClient(create_app(settings, MemoryPublisher())) as app:  # as CI/CD would have it
        assert app.post(WEBHOOK_PATH, content=sample_bytes()).status_code == 200


@pytest.mark.kafka
async def test_kafka_end_to_end_with_a_registry(
    kafka_settings: Settings, schema_registry: RunningRegistry, broker: Broker
) -> None:
    import httpx2  # noqa: PLC0415

    from tests.helpers import run_server  # noqa: PLC0415

    settings = kafka_settings.model_copy(
        update={"schema_registry_url": schema_registry.url, "schema_registration": "auto"}
    )
    servers = run_server(settings)
    running = next(servers)
    try:
        async with httpx2.AsyncClient(base_url=running.url) as http:
            response = await http.post(WEBHOOK_PATH, content=sample_bytes("chatbot"))
            assert response.status_code == 200
    finally:
        with pytest.raises(StopIteration):
            next(servers)
    [record] = await broker.consume([f"{settings.topic_prefix}chatbot"])
    subject = f"{settings.topic_prefix}chatbot-value"
    assert confluent_id(record.value) == schema_registry.state.subjects[subject][-1]
    registry = SchemaRegistry(settings)
    decoder = Decoder(registry=registry)
    await decoder.learn(record.value)
    assert decoder.document(record)["notification"] == sample("chatbot")
    await registry.close()
