"""A Confluent Schema Registry client (also Karapace, Apicurio's ccompat API, Redpanda).

Follows the public REST API: content type `application/vnd.schemaregistry.v1+json`, errors as
`{"error_code": ..., "message": ...}` (40401 subject not found, 40403 schema not found,
409 incompatible, 42201 invalid schema). Ids are resolved once at start and cached: the hot
path never calls the registry.
"""

from __future__ import annotations

import ssl
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson

from bridge.codec.schemas import NAMESPACE, Schema, build, from_definition, text
from bridge.errors import ConfigError, RegistryError
from bridge.notifications.routing import topic_for
from bridge.settings import Settings

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
SUBJECT_NOT_FOUND: Final = 40401
SCHEMA_NOT_FOUND: Final = 40403
VERSION_NOT_FOUND: Final = 40402


def subject_for(strategy: str, topic: str, record_name: str) -> str:
    """The subject name, as Confluent's TopicNameStrategy, RecordNameStrategy and
    TopicRecordNameStrategy name the value subject."""
    if strategy == "record":
        return record_name
    if strategy == "topic_record":
        return f"{topic}-{record_name}"
    return f"{topic}-value"


def subjects(settings: Settings, schemas: dict[str, Schema]) -> dict[str, str]:
    """The subject of each type's value schema, by the configured strategy."""
    return {
        kind: subject_for(
            settings.schema_subject_strategy,
            topic_for(settings.topic_prefix, kind),
            schema.fullname,
        )
        for kind, schema in schemas.items()
    }


class SchemaRegistry:
    def __init__(self, settings: Settings) -> None:
        s = settings
        auth = None
        if s.schema_registry_username:
            auth = (s.schema_registry_username, s.schema_registry_password.get_secret_value())
        verify: ssl.SSLContext | bool = True
        if s.schema_registry_ca_file is not None:
            verify = ssl.create_default_context(cafile=str(s.schema_registry_ca_file))
        self.url = s.schema_registry_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url,
            auth=auth,
            verify=verify,
            timeout=10.0,
            headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE},
        )
        self._by_id: dict[int, Schema] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryError(f"schema registry {self.url} unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()
                code, message = int(error.get("error_code", 0)), str(error.get("message", ""))
            except ValueError:
                code, message = response.status_code, response.text[:200]
            raise RegistryError(
                f"schema registry: {method} {path}: {response.status_code} {message}", code
            )
        return response.json()

    async def register(self, subject: str, schema: Schema) -> int:
        answer = await self._call(
            "POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": text(schema)}
        )
        return int(answer["id"])

    async def lookup(self, subject: str, schema: Schema) -> int | None:
        """The id of exactly this schema under `subject`, or None when it is not registered."""
        try:
            answer = await self._call(
                "POST", f"/subjects/{quote(subject, safe='')}", {"schema": text(schema)}
            )
        except RegistryError as exc:
            if exc.error_code in {SUBJECT_NOT_FOUND, SCHEMA_NOT_FOUND}:
                return None
            raise
        return int(answer["id"])

    async def schema_by_id(self, schema_id: int) -> Schema:
        cached = self._by_id.get(schema_id)
        if cached is None:
            answer = await self._call("GET", f"/schemas/ids/{schema_id}")
            cached = self._by_id[schema_id] = from_definition(orjson.loads(answer["schema"]))
        return cached

    async def compatible(self, subject: str, schema: Schema) -> tuple[bool | None, list[str]]:
        """Whether `schema` may be registered after the latest version under `subject`
        (None: nothing registered yet), with the registry's reasons when it may not."""
        try:
            answer = await self._call(
                "POST",
                f"/compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true",
                {"schema": text(schema)},
            )
        except RegistryError as exc:
            if exc.error_code in {SUBJECT_NOT_FOUND, VERSION_NOT_FOUND}:
                return None, []
            raise
        return bool(answer["is_compatible"]), [str(m) for m in answer.get("messages", [])]

    async def versions(self, subject: str) -> list[int]:
        """The version numbers registered under `subject`, oldest first (none: [])."""
        try:
            answer = await self._call("GET", f"/subjects/{quote(subject, safe='')}/versions")
        except RegistryError as exc:
            if exc.error_code == SUBJECT_NOT_FOUND:
                return []
            raise
        return sorted(int(v) for v in answer)

    async def version(self, subject: str, version: int) -> Schema:
        """The schema registered as `version` of `subject`."""
        path = f"/subjects/{quote(subject, safe='')}/versions/{version}"
        answer = await self._call("GET", path)
        kind = answer.get("schemaType", "AVRO")
        if kind != "AVRO":
            raise RegistryError(f"schema registry: GET {path}: a {kind} schema, not Avro")
        return registered_schema(answer["schema"])

    async def compatibility_level(self, subject: str) -> str:
        answer = await self._call("GET", f"/config/{quote(subject, safe='')}?defaultToGlobal=true")
        return str(answer.get("compatibilityLevel") or answer.get("compatibility"))

    async def check(self) -> str | None:
        """None when the registry answers, else why not."""
        try:
            await self._call("GET", "/subjects")
        except RegistryError as exc:
            return str(exc)
        return None


def registered_schema(schema_text: str) -> Schema:
    """A schema as a registry returns it. Avro's own libraries write names short, beside a
    `namespace`, where bridge's offline check expects full names: they are qualified here."""
    definition = orjson.loads(schema_text)
    name = str(definition["name"])
    fullname = name if "." in name else f"{definition.get('namespace', NAMESPACE)}.{name}"
    return build(fullname, {fullname: definition})


async def resolve_ids(
    registry: SchemaRegistry, settings: Settings, schemas: dict[str, Schema]
) -> dict[str, int]:
    """The id of each type's schema: registered now (BRIDGE_SCHEMA_REGISTRATION=auto) or looked
    up (production, where CI/CD registers); refuses, naming subject and schema, when missing."""
    names = subjects(settings, schemas)
    register = settings.schema_registration == "auto"
    ids = {}
    for kind, schema in schemas.items():
        subject = names[kind]
        if register:
            ids[kind] = await registry.register(subject, schema)
            continue
        found = await registry.lookup(subject, schema)
        if found is None:
            raise ConfigError(
                f"schema {schema.fullname} (fingerprint {schema.fingerprint.hex()}) is not "
                f"registered under subject {subject} at {registry.url}: run `bridge schemas "
                "register` (or set BRIDGE_SCHEMA_REGISTRATION=auto)"
            )
        ids[kind] = found
    return ids
