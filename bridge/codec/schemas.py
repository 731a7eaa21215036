"""The Avro schemas in `avro/`: loaded once, expanded, fingerprinted."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import orjson
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.codec.common import PRIMITIVES, fullname
from bridge.errors import ConfigError

NAMESPACE: Final = "airudder"
# The top-level record of each notification type.
RECORD_NAMES: Final = {
    "call": "airudder.CallNotification",
    "waba_template": "airudder.WabaTemplateNotification",
    "chatbot": "airudder.ChatbotNotification",
}


@dataclass(frozen=True)
class Schema:
    """One top-level schema, self-contained (shared named types inlined)."""

    fullname: str
    definition: dict[str, Any]  # expanded JSON, with our `x-` properties
    parsed: dict[str, Any] = field(repr=False)  # fastavro's compiled form
    canonical: str = field(repr=False)  # Avro Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of `canonical`, little-endian, as in single-object encoding

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


def build(fullname: str, definitions: dict[str, dict[str, Any]]) -> Schema:
    """Expand `fullname` with the shared types it references and fingerprint it."""
    return from_definition(
        _expand(definitions[fullname], definitions, defined=set(), namespace=NAMESPACE)
    )


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
    """The current schema of each notification type, by type."""
    definitions = read_definitions(directory or default_schema_dir())
    missing = set(RECORD_NAMES.values()) - definitions.keys()
    if missing:
        raise ConfigError(f"schemas missing from {directory}: {sorted(missing)}")
    return {kind: build(name, definitions) for kind, name in RECORD_NAMES.items()}


def history_dir(directory: Path | None = None) -> Path:
    return (directory or default_schema_dir()) / "history"


def load_history(directory: Path | None = None) -> dict[str, list[tuple[str, Schema]]]:
    """Every published version of each type's schema, oldest first: avro/history/<type>/vN.avsc."""
    history: dict[str, list[tuple[str, Schema]]] = {}
    for kind in RECORD_NAMES:
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
