"""What the codec modules share: Avro names, the two signals of the mapping rules, JSON text."""

from __future__ import annotations

from typing import Any, Final

import orjson

PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
LONG_MIN: Final = -(2**63)
LONG_MAX: Final = 2**63 - 1


def fullname(name: str, namespace: str) -> str:
    """A name as Avro resolves it: dotted names are full already, others take the namespace."""
    return name if "." in name else f"{namespace}.{name}"


def namespace_of(name: str) -> str:
    return name.rpartition(".")[0]


def dumps(value: Any) -> str:
    """A JSON value as the text kept in `unmapped`."""
    return orjson.dumps(value).decode()


class Mismatch(Exception):
    """The value does not fit the typed field: it goes to `unmapped` whole."""


class Coerced(Exception):
    """A JSON number sent for a string: typed as its JSON `text`, and kept in `unmapped` too."""

    def __init__(self, text: str) -> None:
        self.text = text
