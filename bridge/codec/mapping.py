"""Map stage: a notification (parsed JSON) to an Avro record and back, losslessly.

The mapping is driven by the schema, so a field added to `avro/` is mapped without code.
Rules (documented for consumers in avro/README.md):

- A member whose name and JSON type match a typed field is stored in that field.
- Every other member (unknown name, or a value of another JSON type, or JSON null) is stored
  in the record's `unmapped` map as its JSON text; the typed field then stays null.
- A JSON number sent where a string is expected is stored in the string field as its JSON
  text *and* exactly in `unmapped`.
- Rebuilding takes the non-null typed fields and overlays `unmapped`.
- A map or array whose entries do not all fit is stored whole in `unmapped`.
- A union of records (chat message content) picks its branch by the object's `type`: each
  record lists the types it takes in `x-types`; the one with `"*"` takes the rest. Rebuilding
  takes a union value as fastavro gives it with `return_record_name` (`(name, record)`) or
  without (the record alone, its branch told by its fields and `type`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from bridge.codec.common import LONG_MAX, LONG_MIN, Coerced, Mismatch, dumps, fullname, namespace_of
from bridge.codec.schemas import Schema

UNMAPPED: Final = "unmapped"

Convert = Callable[[Any], Any]


class Mapper:
    """Compiled once per schema; `to_record` and `to_notification` are inverses."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        compiler = _Compiler()
        self._to, self._back = compiler.compile(schema.definition, "")

    def to_record(self, notification: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = self._to(notification)
        return record

    def to_notification(self, record: dict[str, Any]) -> dict[str, Any]:
        notification: dict[str, Any] = self._back(record)
        return notification


class _Compiler:
    def __init__(self) -> None:
        self._named: dict[str, tuple[Convert, Convert]] = {}

    def compile(self, node: Any, namespace: str) -> tuple[Convert, Convert]:
        if isinstance(node, str):
            return self._primitive_or_reference(node, namespace)
        if isinstance(node, list):
            return self._union(node, namespace)
        kind = node["type"]
        if kind == "record":
            return self._record(node, namespace)
        if kind == "map":
            return self._map(node, namespace)
        if kind == "array":
            return self._array(node, namespace)
        if isinstance(kind, str | list | dict):
            return self.compile(kind, namespace)
        raise TypeError(f"unsupported schema node {node!r}")  # pragma: no cover

    def _primitive_or_reference(self, name: str, namespace: str) -> tuple[Convert, Convert]:
        primitive = _PRIMITIVE_CONVERTERS.get(name)
        if primitive is not None:
            return primitive, _identity
        full = fullname(name, namespace)
        # Looked up at call time, so recursive types (a message replying to a message) work.
        named = self._named

        def to(value: Any) -> Any:
            return named[full][0](value)

        def back(value: Any) -> Any:
            return named[full][1](value)

        return to, back

    def _record(self, node: dict[str, Any], namespace: str) -> tuple[Convert, Convert]:
        full = fullname(node["name"], namespace)
        namespace = namespace_of(full)
        self._named[full] = (_unresolved, _unresolved)
        fields = {
            f["name"]: self.compile(f["type"], namespace)
            for f in node["fields"]
            if f["name"] != UNMAPPED
        }
        pair = _record_converters(
            {name: to for name, (to, _) in fields.items()},
            tuple((name, back) for name, (_, back) in fields.items()),
        )
        self._named[full] = pair
        return pair

    def _union(self, branches: list[Any], namespace: str) -> tuple[Convert, Convert]:
        others = [b for b in branches if b != "null"]
        if len(others) > 1:
            return self._tagged_union(others, namespace)
        # ["null", T]: JSON null is recorded in `unmapped`, so a null field means "absent".
        branch = others[0]
        to, back = self.compile(branch, namespace)
        name = _branch_name(branch, namespace)
        if name is None:
            return to, back

        # A record, array or map goes to fastavro as (branch name, value): it then picks the
        # branch by name instead of validating the whole value against it (which, nested, was
        # most of the cost of encoding).
        def to_named(value: Any) -> tuple[str, Any]:
            return name, to(value)

        def back_named(value: Any) -> Any:
            return back(value[1] if type(value) is tuple else value)

        return to_named, back_named

    def _tagged_union(self, branches: list[Any], namespace: str) -> tuple[Convert, Convert]:
        by_type: dict[str, tuple[str, Convert]] = {}
        back_by_name: dict[str, Convert] = {}
        by_fields: dict[frozenset[str], list[str]] = {}
        fallback: tuple[str, Convert] | None = None
        for branch in branches:
            if not (isinstance(branch, dict) and branch.get("type") == "record"):
                raise TypeError("only unions of records (with x-types) are supported")
            name = fullname(branch["name"], namespace)
            branch_to, back_by_name[name] = self.compile(branch, namespace)
            by_fields.setdefault(frozenset(f["name"] for f in branch["fields"]), []).append(name)
            for tag in branch["x-types"]:
                if tag == "*":
                    fallback = (name, branch_to)
                else:
                    by_type[tag] = (name, branch_to)
        if fallback is None:
            raise TypeError("a union of records needs one branch with x-types ['*']")
        default = fallback

        def pick(tag: Any) -> tuple[str, Convert]:
            return by_type.get(tag, default) if isinstance(tag, str) else default

        def to(obj: Any) -> tuple[str, dict[str, Any]]:
            if type(obj) is not dict:
                raise Mismatch
            name, convert = pick(obj.get("type"))
            return name, convert(obj)

        return to, _union_back(back_by_name, by_fields, lambda tag: pick(tag)[0])

    def _map(self, node: dict[str, Any], _namespace: str) -> tuple[Convert, Convert]:
        if node["values"] != "string":
            raise TypeError("only maps of strings are supported")  # pragma: no cover

        def to(obj: Any) -> dict[str, str]:
            if type(obj) is not dict or any(type(v) is not str for v in obj.values()):
                raise Mismatch
            return obj

        return to, _identity

    def _array(self, node: dict[str, Any], namespace: str) -> tuple[Convert, Convert]:
        item_to, item_back = self.compile(node["items"], namespace)

        def to(items: Any) -> list[Any]:
            if type(items) is not list:
                raise Mismatch
            try:
                return [item_to(item) for item in items]
            except Coerced:
                raise Mismatch from None

        def back(items: list[Any]) -> list[Any]:
            return [item_back(item) for item in items]

        return to, back


def _record_converters(  # noqa: C901 - one flat loop: this is the hot path
    to_fields: dict[str, Convert], back_fields: tuple[tuple[str, Convert], ...]
) -> tuple[Convert, Convert]:
    def to(obj: Any) -> dict[str, Any]:
        if type(obj) is not dict:
            raise Mismatch
        out: dict[str, Any] = {}
        unmapped: dict[str, str] = {}
        for key, value in obj.items():
            convert = to_fields.get(key)
            if convert is None:
                unmapped[key] = dumps(value)
                continue
            try:
                out[key] = convert(value)
            except Coerced as coerced:
                out[key] = coerced.text
                unmapped[key] = dumps(value)
            except Mismatch:
                unmapped[key] = dumps(value)
        out[UNMAPPED] = unmapped
        return out

    def back(record: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for name, convert in back_fields:
            value = record.get(name)
            if value is not None:
                obj[name] = convert(value)
        for key, text in (record.get(UNMAPPED) or {}).items():
            obj[key] = orjson.loads(text)
        return obj

    return to, back


def _union_back(
    back_by_name: dict[str, Convert],
    by_fields: dict[frozenset[str], list[str]],
    tagged: Callable[[Any], str],
) -> Convert:
    def back(value: Any) -> Any:
        # fastavro reads a union of records as (name, record) with return_record_name; without
        # it (Confluent's AvroDeserializer by default), as the record alone, with every field of
        # its branch: the branch with exactly those fields, and among branches alike (text and
        # button content) the one its `type` names, as `to` chose it.
        if type(value) is tuple:
            name, record = value
        else:
            record = value
            alike = by_fields.get(frozenset(record), [])
            name = tagged(record.get("type"))
            if alike and (len(alike) == 1 or name not in alike):
                name = alike[0]
        return back_by_name[name](record)

    return back


def _branch_name(schema: Any, namespace: str) -> str | None:
    """How fastavro's tuple notation names a union branch: the full name of a record (or of
    a reference to one), `array` or `map`; None for primitives (cheap to match anyway)."""
    if isinstance(schema, dict) and schema.get("type") in {"array", "map"}:
        return str(schema["type"])
    if isinstance(schema, dict) and schema.get("type") == "record":
        name = str(schema["name"])
    elif isinstance(schema, str) and schema not in _PRIMITIVE_CONVERTERS and schema != "null":
        name = schema
    else:
        return None
    return fullname(name, namespace)


def _identity(value: Any) -> Any:
    return value


def _unresolved(_: Any) -> Any:  # pragma: no cover - replaced before use
    raise AssertionError("schema reference used before its definition")


def _to_string(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is int or type(value) is float:
        raise Coerced(dumps(value))
    raise Mismatch


def _to_long(value: Any) -> int:
    if type(value) is int and LONG_MIN <= value <= LONG_MAX:
        return value
    raise Mismatch


def _to_double(value: Any) -> float:
    if type(value) is float:
        return value
    raise Mismatch


def _to_boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise Mismatch


_PRIMITIVE_CONVERTERS: Final[dict[str, Convert]] = {
    "string": _to_string,
    "long": _to_long,
    "double": _to_double,
    "boolean": _to_boolean,
}
