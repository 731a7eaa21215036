"""A test double of a Confluent Schema Registry: the REST API over real HTTP, in memory.

Speaks what bridge and Confluent's own clients use: register, look up by subject, get by id,
list a subject's versions and get one, compatibility against the latest version, config;
errors as {"error_code", "message"} with the documented codes (40401, 40402, 40403, 409,
42201). Compatibility is decided with fastavro's parser for validity and bridge.codec.compat for
the rules. With `ignores_verbose`, a compatibility check is answered as Karapace 3.16 answers it:
`{"is_compatible": false}`, no reasons, whatever `?verbose=true` asks.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import fastavro
import orjson
from fastavro.schema import to_parsing_canonical_form
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.codec.compat import problems

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class Registry:
    users: dict[str, str] = field(default_factory=dict)  # basic auth, when not empty
    schemas: dict[int, str] = field(default_factory=dict)  # id -> schema text
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version
    config: dict[str, str] = field(default_factory=lambda: {"": "BACKWARD"})
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, ctype
    ignores_verbose: bool = False  # as Karapace: no "messages" in a compatibility answer

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/subjects", self.list_subjects, methods=["GET"]),
                Route("/subjects/{subject}/versions", self.register, methods=["POST"]),
                Route("/subjects/{subject}/versions", self.list_versions, methods=["GET"]),
                Route("/subjects/{subject}/versions/{version}", self.get_version, methods=["GET"]),
                Route("/subjects/{subject}", self.lookup, methods=["POST"]),
                Route("/schemas/ids/{id:int}", self.by_id, methods=["GET"]),
                Route(
                    "/compatibility/subjects/{subject}/versions/latest",
                    self.compatibility,
                    methods=["POST"],
                ),
                Route("/config", self.get_config, methods=["GET"]),
                Route("/config/{subject}", self.get_config, methods=["GET"]),
                Route("/config/{subject}", self.put_config, methods=["PUT"]),
            ],
            middleware=[],
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _refuse(self, request: Request) -> Response | None:
        self.requests.append(
            (request.method, request.url.path, request.headers.get("content-type", ""))
        )
        if not self.users:
            return None
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        user, _, password = base64.b64decode(encoded or b"").decode().partition(":")
        if scheme.lower() != "basic" or self.users.get(user) != password:
            return _error(401, 40101, "Unauthorized")
        return None

    def _canonical(self, text: str) -> str:
        return to_parsing_canonical_form(fastavro.parse_schema(orjson.loads(text)))

    def _level(self, subject: str) -> str:
        return self.config.get(subject, self.config[""])

    def _incompatible(self, subject: str, text: str) -> list[str]:
        versions = self.subjects.get(subject)
        if not versions:
            return []
        level = self._level(subject)
        if level == "NONE":
            return []
        olds = versions if level.endswith("_TRANSITIVE") else versions[-1:]
        new = orjson.loads(text)
        return [
            p
            for old in olds
            for p in problems(
                new, orjson.loads(self.schemas[old]), level.removesuffix("_TRANSITIVE")
            )
        ]

    async def _schema_text(self, request: Request) -> str | Response:
        body = orjson.loads(await request.body())
        text = body.get("schema")
        if body.get("schemaType", "AVRO") != "AVRO" or not isinstance(text, str):
            return _error(422, 42201, "Invalid schema")
        try:
            self._canonical(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is an invalid schema
            return _error(422, 42201, f"Invalid schema: {exc}")
        return text

    # -- endpoints -------------------------------------------------------------------------------

    async def list_subjects(self, request: Request) -> Response:
        return self._refuse(request) or _json(sorted(self.subjects))

    async def register(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        subject = request.path_params["subject"]
        text = await self._schema_text(request)
        if isinstance(text, Response):
            return text
        canonical = self._canonical(text)
        for version_id in self.subjects.get(subject, []):
            if self._canonical(self.schemas[version_id]) == canonical:
                return _json({"id": version_id})
        if reasons := self._incompatible(subject, text):
            return _error(
                409, 409, "Schema being registered is incompatible: " + "; ".join(reasons)
            )
        schema_id = next(
            (i for i, t in self.schemas.items() if self._canonical(t) == canonical),
            len(self.schemas) + 1,
        )
        self.schemas.setdefault(schema_id, text)
        self.subjects.setdefault(subject, []).append(schema_id)
        return _json({"id": schema_id})

    async def _subject_and_schema(self, request: Request) -> tuple[str, str] | Response:
        """The subject (which must exist) and the schema posted, or the error to answer."""
        if refused := self._refuse(request):
            return refused
        subject = request.path_params["subject"]
        if subject not in self.subjects:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        text = await self._schema_text(request)
        return text if isinstance(text, Response) else (subject, text)

    async def lookup(self, request: Request) -> Response:
        found = await self._subject_and_schema(request)
        if isinstance(found, Response):
            return found
        subject, text = found
        canonical = self._canonical(text)
        for version, schema_id in enumerate(self.subjects[subject], start=1):
            if self._canonical(self.schemas[schema_id]) == canonical:
                return _json(
                    {"subject": subject, "id": schema_id, "version": version, "schema": text}
                )
        return _error(404, 40403, "Schema not found")

    async def by_id(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        text = self.schemas.get(request.path_params["id"])
        if text is None:
            return _error(404, 40403, "Schema not found")
        return _json({"schema": text})

    async def list_versions(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        versions = self.subjects.get(request.path_params["subject"])
        if versions is None:
            return _error(404, 40401, f"Subject '{request.path_params['subject']}' not found.")
        return _json(list(range(1, len(versions) + 1)))

    async def get_version(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        subject, asked = request.path_params["subject"], request.path_params["version"]
        versions = self.subjects.get(subject)
        if versions is None:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        number = (
            len(versions) if asked in {"latest", "-1"} else int(asked) if asked.isdigit() else 0
        )
        if not 1 <= number <= len(versions):
            return _error(404, 40402, f"Version {asked} not found.")
        schema_id = versions[number - 1]
        return _json(
            {
                "subject": subject,
                "version": number,
                "id": schema_id,
                "schema": self.schemas[schema_id],
            }
        )

    async def compatibility(self, request: Request) -> Response:
        found = await self._subject_and_schema(request)
        if isinstance(found, Response):
            return found
        subject, text = found
        reasons = self._incompatible(subject, text)
        answer: dict[str, Any] = {"is_compatible": not reasons}
        if request.query_params.get("verbose") == "true" and not self.ignores_verbose:
            answer["messages"] = reasons
        return _json(answer)

    async def get_config(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        subject = request.path_params.get("subject", "")
        return _json({"compatibilityLevel": self._level(subject)})

    async def put_config(self, request: Request) -> Response:
        if refused := self._refuse(request):
            return refused
        level = orjson.loads(await request.body())["compatibility"]
        self.config[request.path_params["subject"]] = level
        return _json({"compatibility": level})


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> Response:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)
