"""The Avro schemas in `avro/`: loaded once, expanded, fingerprinted.

A notification type is declared by its schema alone: a top-level record whose file carries
`"x-notification": {"type": ..., "event-id": [...], "description": ...}`. The type's topic is
`<prefix><type>`; its event id is `<type>:` and the values at the `event-id` paths joined by
`:` (else a hash of the notification). The declaration is bridge's, not the contract's: it is
taken off the schema before it is fingerprinted, registered or kept in history.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, cast

import orjson
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.codec.common import PRIMITIVES, fullname
from bridge.errors import ConfigError

NAMESPACE: Final = "airudder"
DECLARATION: Final = "x-notification"
# A type names a topic (`<prefix><type>`), and `dlq` and `event-ids` are bridge's own.
_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
_RESERVED: Final = frozenset({"dlq", "event-ids", "event_ids"})


@dataclass(frozen=True)
class Schema:
    """One top-level schema, self-contained (shared named types inlined)."""

    fullname: str
    definition: dict[str, Any]  # expanded JSON, with our `x-` properties
    parsed: dict[str, Any] = field(repr=False)  # fastavro's compiled form
    canonical: str = field(repr=False)  # Avro Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of `canonical`, little-endian, as in single-object encoding
    # The declared event-id rule of a notification type's schema: paths of member names.
    event_id: tuple[tuple[str, ...], ...] = ()

    @property
    def name(self) -> str:
        return self.fullname.rpartition(".")[2]


def default_schema_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    packaged = package / "avro"  # inside an installed wheel (pyproject's force-include)
    return packaged if packaged.is_dir() else package.parent / "avro"


def read_definitions(directory: Path) -> dict[str, dict[str, Any]]:
    """Every named schema in `directory`, by full name. One file per name, `<fullname>.avsc`."""
    definitions = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            definition = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read schema {path}: {exc}") from exc
        name = fullname(definition["name"], definition.get("namespace", NAMESPACE))
        if path.stem != name:
            raise ConfigError(f"schema {path} defines {name}; name the file {name}.avsc")
        definitions[name] = definition
    return definitions


@dataclass(frozen=True)
class Declaration:
    """A notification type, as its schema file declares it."""

    type: str
    record: str  # the full name of its top-level record
    event_id: tuple[tuple[str, ...], ...]  # paths of member names, e.g. (("call", "call_id"),)
    description: str


def declarations(directory: Path | None = None) -> dict[str, Declaration]:
    """The notification types declared in `directory`, by type, in file-name order."""
    directory = directory or default_schema_dir()
    return _declarations(read_definitions(directory), directory)


def _declarations(definitions: dict[str, dict[str, Any]], where: Path) -> dict[str, Declaration]:
    found: dict[str, Declaration] = {}
    for name, definition in definitions.items():
        declared = definition.get(DECLARATION)
        if declared is None:
            continue
        declaration = _declaration(name, declared, where)
        if declaration.type in found:
            raise ConfigError(
                f"type {declaration.type!r} declared twice in {where}: by "
                f"{found[declaration.type].record} and {name}"
            )
        found[declaration.type] = declaration
    if not found:
        raise ConfigError(f"no notification type declared in {where} (no {DECLARATION!r})")
    return found


def _declaration(name: str, declared: object, where: Path) -> Declaration:
    problem = f"schema {where / name}.avsc: {DECLARATION}"
    if not isinstance(declared, dict):
        raise ConfigError(f"{problem} must be an object")
    kind, rule = declared.get("type"), declared.get("event-id", [])
    if not isinstance(kind, str) or not _TYPE_NAME.fullmatch(kind) or kind in _RESERVED:
        raise ConfigError(f"{problem}.type must be a lower-case name, not dlq: {kind!r}")
    if not isinstance(rule, list) or not all(
        isinstance(path, str) and all(path.split(".")) for path in rule
    ):
        raise ConfigError(f"{problem}.event-id must be a list of dotted member paths: {rule!r}")
    return Declaration(
        type=kind,
        record=name,
        event_id=tuple(tuple(path.split(".")) for path in rule),
        description=str(declared.get("description", "")),
    )


def build(fullname: str, definitions: dict[str, dict[str, Any]]) -> Schema:
    """Expand `fullname` with the shared types it references and fingerprint it (its
    declaration, if any, kept aside as `event_id`)."""
    definition = dict(definitions[fullname])
    declared = definition.pop(DECLARATION, None)
    expanded = _expand(definition, definitions, defined=set(), namespace=NAMESPACE)
    schema = from_definition(expanded)
    if isinstance(declared, dict):
        rule = declared.get("event-id", [])
        schema = replace(schema, event_id=tuple(tuple(p.split(".")) for p in rule))
    return schema


def from_definition(expanded: dict[str, Any]) -> Schema:
    """A self-contained schema (as in avro/history/ or from a registry), fingerprinted."""
    canonical = to_parsing_canonical_form(expanded)
    return Schema(
        fullname=fullname(expanded["name"], expanded.get("namespace", NAMESPACE)),
        definition=expanded,
        parsed=cast("dict[str, Any]", parse_schema(copy.deepcopy(expanded))),
        canonical=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


def load_schemas(directory: Path | None = None) -> dict[str, Schema]:
    """The current schema of each notification type declared in `directory`, by type."""
    directory = directory or default_schema_dir()
    definitions = read_definitions(directory)
    return {
        kind: build(declared.record, definitions)
        for kind, declared in _declarations(definitions, directory).items()
    }


def history_dir(directory: Path | None = None) -> Path:
    return (directory or default_schema_dir()) / "history"


def load_history(directory: Path | None = None) -> dict[str, list[tuple[str, Schema]]]:
    """Every published version of each type's schema, oldest first: avro/history/<type>/vN.avsc."""
    history: dict[str, list[tuple[str, Schema]]] = {}
    for kind in declarations(directory):
        files = sorted(
            (history_dir(directory) / kind).glob("v*.avsc"), key=lambda p: int(p.stem[1:])
        )
        history[kind] = [(p.stem, from_definition(orjson.loads(p.read_bytes()))) for p in files]
    return history


def text(schema: Schema) -> str:
    """The schema as registered and as kept in history: its expanded JSON."""
    return orjson.dumps(schema.definition).decode()


def _expand(node: Any, definitions: dict[str, Any], defined: set[str], namespace: str) -> Any:
    """Inline the first use of each named type that lives in another file; later uses stay
    references, as Avro requires each name to be defined once."""
    if isinstance(node, str):
        if node in PRIMITIVES:
            return node
        name = fullname(node, namespace)
        if name in defined or name not in definitions:
            return name
        return _expand(definitions[name], definitions, defined, namespace)
    if isinstance(node, list):
        return [_expand(item, definitions, defined, namespace) for item in node]
    if not isinstance(node, dict):
        return node
    return _expand_complex(node, definitions, defined, namespace)


def _expand_complex(
    node: dict[str, Any], definitions: dict[str, Any], defined: set[str], namespace: str
) -> dict[str, Any]:
    out = dict(node)
    kind = node.get("type")
    if kind in {"record", "enum", "fixed"}:
        namespace = node.get("namespace", namespace)
        out["name"] = fullname(node["name"], namespace)
        out.pop("namespace", None)
        defined.add(out["name"])
    if kind == "record":
        out["fields"] = [
            {**f, "type": _expand(f["type"], definitions, defined, namespace)}
            for f in node["fields"]
        ]
    elif kind == "array":
        out["items"] = _expand(node["items"], definitions, defined, namespace)
    elif kind == "map":
        out["values"] = _expand(node["values"], definitions, defined, namespace)
    elif isinstance(kind, list | dict):
        out["type"] = _expand(kind, definitions, defined, namespace)
    return out


# The types of the packaged schemas (`avro/`), for what has no settings at hand (the CLI's
# choices, tests); the service takes them from BRIDGE_SCHEMA_DIR.
RECORD_NAMES: Final = {kind: d.record for kind, d in declarations().items()}
