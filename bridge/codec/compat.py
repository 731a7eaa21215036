"""Avro schema compatibility, offline: can a reader schema read what a writer schema wrote?

The rules of the Avro specification's "Schema Resolution": records match by name (or alias);
a reader field missing from the writer needs a default; writer fields the reader lacks are
skipped; numbers may be promoted (int to long, float, double; long to float, double; float to
double); string and bytes read each other; a writer union needs every branch readable, a reader
union needs one branch that reads the writer; enums need the writer's symbols (or a default).
Each problem is reported with the path of the field.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from bridge.codec.common import PRIMITIVES

Level = Literal["BACKWARD", "FORWARD", "FULL", "NONE"]
LEVELS: Final = ("BACKWARD", "FORWARD", "FULL", "NONE")

_PROMOTIONS: Final = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def problems(new: dict[str, Any], old: dict[str, Any], level: str) -> list[str]:
    """What breaks `level` compatibility of `new` against `old` (both expanded schemas)."""
    found = []
    if level.startswith(("BACKWARD", "FULL")):
        found += [f"new schema cannot read old data: {p}" for p in can_read(new, old)]
    if level.startswith(("FORWARD", "FULL")):
        found += [f"old schema cannot read new data: {p}" for p in can_read(old, new)]
    return found


def can_read(reader: Any, writer: Any) -> list[str]:
    """Problems a reader schema has with data written with the writer schema."""
    return _Resolver(reader, writer).check(reader, writer, "")


class _Resolver:
    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader_names: dict[str, Any] = {}
        self._writer_names: dict[str, Any] = {}
        _collect(reader, self._reader_names)
        _collect(writer, self._writer_names)
        self._seen: set[tuple[str, str]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:  # noqa: PLR0911 - one return per rule
        reader = self._resolve(reader, self._reader_names)
        writer = self._resolve(writer, self._writer_names)
        where = path or "<root>"
        if isinstance(writer, list):  # every branch the writer may have used must be readable
            return [p for branch in writer for p in self.check(reader, branch, path)]
        if isinstance(reader, list):
            attempts = [self.check(branch, writer, path) for branch in reader]
            if any(not found for found in attempts):
                return []
            # The branch of the writer's own kind says best what went wrong.
            same = [
                found
                for branch, found in zip(reader, attempts, strict=True)
                if _name(self._resolve(branch, self._reader_names)) == _name(writer)
            ]
            return (
                same[0]
                if same
                else [f"{where}: no branch of {_name(reader)} reads {_name(writer)}"]
            )
        r_type, w_type = _type(reader), _type(writer)
        if r_type in PRIMITIVES or w_type in PRIMITIVES:
            if w_type in PRIMITIVES and r_type in _PROMOTIONS.get(w_type, {w_type}):
                return []
            return [f"{where}: {_name(writer)} cannot be read as {_name(reader)}"]
        if r_type != w_type:
            return [f"{where}: {w_type} cannot be read as {r_type}"]
        return self._complex(r_type, reader, writer, path)

    def _complex(self, kind: str, reader: Any, writer: Any, path: str) -> list[str]:
        if kind == "record":
            return self._records(reader, writer, path)
        if kind == "array":
            return self.check(reader["items"], writer["items"], f"{path}[]")
        if kind == "map":
            return self.check(reader["values"], writer["values"], f"{path}{{}}")
        if kind == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                return [f"{path}: enum symbols {sorted(missing)} unknown to the reader"]
        if kind == "fixed" and reader.get("size") != writer.get("size"):
            return [f"{path}: fixed size {writer.get('size')} read as {reader.get('size')}"]
        return []

    def _records(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        names = {writer["name"], *writer.get("aliases", ())}
        if reader["name"] not in names and not names & set(reader.get("aliases", ())):
            short = {n.rpartition(".")[2] for n in names}
            if reader["name"].rpartition(".")[2] not in short:
                return [f"{path or '<root>'}: record {writer['name']} read as {reader['name']}"]
        key = (reader["name"], writer["name"])
        if key in self._seen:  # recursive types: checked once
            return []
        self._seen.add(key)
        written = {f["name"]: f for f in writer["fields"]}
        found = []
        for field in reader["fields"]:
            here = f"{path}.{field['name']}" if path else field["name"]
            source = next(
                (written[n] for n in (field["name"], *field.get("aliases", ())) if n in written),
                None,
            )
            if source is None:
                if "default" not in field:
                    found.append(f"{here}: new field without a default")
                continue
            found += self.check(field["type"], source["type"], here)
        return found

    @staticmethod
    def _resolve(schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names.get(schema, schema)
        if (
            isinstance(schema, dict)
            and isinstance(schema.get("type"), str | list | dict)
            and (schema["type"] not in {"record", "enum", "fixed", "array", "map"})
        ):
            return _Resolver._resolve(schema["type"], names)
        return schema


def _collect(schema: Any, names: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, names)
    elif isinstance(schema, dict):
        if schema.get("type") in {"record", "enum", "fixed"}:
            names[schema["name"]] = schema
        for field in schema.get("fields", ()):
            _collect(field["type"], names)
        for key in ("items", "values"):
            if key in schema:
                _collect(schema[key], names)
        if isinstance(schema.get("type"), list | dict):
            _collect(schema["type"], names)


def _type(schema: Any) -> str:
    return schema if isinstance(schema, str) else str(schema.get("type"))


def _name(schema: Any) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_name(b) for b in schema) + "]"
    if isinstance(schema, dict):
        return str(schema.get("name", schema.get("type")))
    return str(schema)
