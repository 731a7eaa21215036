"""Map and encode in one pass: the vendor's JSON straight to Avro binary.

The same rules as `bridge.codec.mapping` (a test checks that both give the same record for
any input), without building the intermediate record: each field is written as it is mapped.
Compiled once per schema: each record becomes a generated straight-line function (see
`_generate`; its source is built from the schema alone, field names as literals).
fastavro remains the reader, and the writer of anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from bridge.codec.common import LONG_MAX, LONG_MIN, Coerced, Mismatch, dumps, fullname, namespace_of
from bridge.codec.mapping import UNMAPPED
from bridge.codec.schemas import Schema

Write = Callable[[Any, bytearray], None]
_DOUBLE: Final = struct.Struct("<d").pack
_ABSENT: Final = object()


def _long(n: int, out: bytearray) -> None:
    n = (n << 1) ^ (n >> 63)  # zigzag
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _text(value: str, out: bytearray) -> None:
    data = value.encode()
    size = len(data)
    if size < 64:  # the zigzag varint of a small length is one byte
        out.append(size << 1)
    else:
        _long(size, out)
    out += data


def _string(value: Any, out: bytearray) -> None:
    if type(value) is str:
        _text(value, out)
    elif type(value) is int or type(value) is float:
        raise Coerced(dumps(value))
    else:
        raise Mismatch


def _long_field(value: Any, out: bytearray) -> None:
    if type(value) is not int or not LONG_MIN <= value <= LONG_MAX:
        raise Mismatch
    _long(value, out)


def _double(value: Any, out: bytearray) -> None:
    if type(value) is not float:
        raise Mismatch
    out += _DOUBLE(value)


def _boolean(value: Any, out: bytearray) -> None:
    if type(value) is not bool:
        raise Mismatch
    out.append(1 if value else 0)


def _string_map(value: Any, out: bytearray) -> None:
    if type(value) is not dict or any(type(v) is not str for v in value.values()):
        raise Mismatch
    _map_of_text(value, out)


def _map_of_text(value: dict[str, str], out: bytearray) -> None:
    if value:
        _long(len(value), out)
        for key, text in value.items():
            _text(key, out)
            _text(text, out)
    out.append(0)


_PRIMITIVES: Final[dict[str, Write]] = {
    "string": _string,
    "long": _long_field,
    "double": _double,
    "boolean": _boolean,
}


class Unsupported(Exception):
    """The schema has a shape this writer does not handle: use mapping + fastavro."""


class Writer:
    """`write(notification)` gives the Avro body `Codec.encode(Mapper.to_record(...))` would."""

    def __init__(self, schema: Schema) -> None:
        self._named: dict[str, Write] = {}
        # Writers of records and of unions of records: any dict is theirs (a member that does
        # not fit goes to `unmapped`), so they fail only on a value that is not a dict.
        self._takes_any_dict: set[Write] = set()
        self._write = self._compile(schema.definition, "")

    def write(self, notification: dict[str, Any]) -> bytes:
        out = bytearray()
        self._write(notification, out)
        return bytes(out)

    def _compile(self, node: Any, namespace: str) -> Write:  # noqa: PLR0911
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return _PRIMITIVES[node]
            full = fullname(node, namespace)
            named = self._named
            if full in named:  # defined earlier: use it directly
                return named[full]

            def reference(value: Any, out: bytearray) -> None:  # resolved late: recursion
                named[full](value, out)

            self._takes_any_dict.add(reference)  # named types are records here
            return reference
        if isinstance(node, list):
            return self._union(node, namespace)
        kind = node["type"]
        if kind == "record":
            return self._record(node, namespace)
        if kind == "map" and node["values"] == "string":
            return _string_map
        if kind == "array":
            return self._array(node, namespace)
        if isinstance(kind, str | list | dict) and kind not in {"map", "enum", "fixed"}:
            return self._compile(kind, namespace)
        raise Unsupported(repr(node)[:80])

    def _record(self, node: dict[str, Any], namespace: str) -> Write:
        full = fullname(node["name"], namespace)
        namespace = namespace_of(full)
        # (name, writer, whether the record writes the union's branch byte itself)
        fields: list[tuple[str, Write, bool]] = []
        for field in node["fields"]:
            if field["name"] == UNMAPPED:
                continue
            branches = field["type"]
            if not (isinstance(branches, list) and branches[0] == "null"):
                raise Unsupported(f"{full}.{field['name']} is not a nullable union")
            if len(branches) == 2:
                fields.append((field["name"], self._compile(branches[1], namespace), True))
            else:
                fields.append((field["name"], self._compile(branches, namespace), False))
        write = _generate(full, fields, self._takes_any_dict)
        self._named[full] = write
        self._takes_any_dict.add(write)
        return write

    def _union(self, branches: list[Any], namespace: str) -> Write:
        others = branches[1:] if branches[0] == "null" else None
        if not others or len(others) == 1 or "null" in others:
            raise Unsupported(f"union {branches!r:.80}")  # ["null", T] is the record's job
        return self._tagged(others, namespace)

    def _tagged(self, branches: list[Any], namespace: str) -> Write:
        by_type: dict[str, tuple[bytes, Write]] = {}
        fallback: tuple[bytes, Write] | None = None
        for index, branch in enumerate(branches, start=1):
            if not (isinstance(branch, dict) and branch.get("type") == "record"):
                raise Unsupported("only unions of records are tagged")
            tag = bytearray()
            _long(index, tag)
            entry = (bytes(tag), self._record(branch, namespace))
            for kind in branch["x-types"]:
                if kind == "*":
                    fallback = entry
                else:
                    by_type[kind] = entry
        if fallback is None:
            raise Unsupported("a tagged union needs a '*' branch")
        default = fallback

        def write(value: Any, out: bytearray) -> None:
            if type(value) is not dict:
                raise Mismatch
            kind = value.get("type")
            tag, write_record = by_type.get(kind, default) if type(kind) is str else default
            out += tag
            write_record(value, out)

        self._takes_any_dict.add(write)
        return write

    def _array(self, node: dict[str, Any], namespace: str) -> Write:
        item = self._compile(node["items"], namespace)

        def write(value: Any, out: bytearray) -> None:
            if type(value) is not list:
                raise Mismatch
            if value:
                _long(len(value), out)
                try:
                    for element in value:
                        item(element, out)
                except Coerced:
                    raise Mismatch from None
            out.append(0)

        return write


def _field(  # noqa: PLR0913, PLR0917 - the slow path of one field, called from generated code
    name: str,
    value: Any,
    write_field: Write,
    branch_byte: bool,
    out: bytearray,
    unmapped: dict[str, str] | None,
) -> dict[str, str] | None:
    """Write one present field that the inline fast path did not take; returns `unmapped`."""
    mark = len(out)
    try:
        if branch_byte:
            if value is None:
                raise Mismatch  # noqa: TRY301 - JSON null is kept in `unmapped`
            out.append(2)  # branch 1 of ["null", T]
        write_field(value, out)
    except Coerced as coerced:  # a number for a string: typed as text, kept exactly
        del out[mark:]
        out.append(2)
        _text(coerced.text, out)
    except Mismatch:
        del out[mark:]
        out.append(0)
    else:
        return unmapped
    if unmapped is None:
        unmapped = {}
    unmapped[name] = dumps(value)
    return unmapped


def _rest(
    obj: dict[str, Any], known: frozenset[str], unmapped: dict[str, str] | None
) -> dict[str, str] | None:
    """Add the members without a typed field to `unmapped`."""
    rest = [(k, dumps(v)) for k, v in obj.items() if k not in known]
    if not rest:
        return unmapped
    if unmapped is None:
        unmapped = {}
    unmapped.update(rest)
    return unmapped


# The branch byte of a present ["null", "string"] and the length of a short text, together.
_PRESENT_TEXT: Final = tuple(bytes((2, size << 1)) for size in range(64))

# The inline fast path of each kind of field: the value's usual type, written without a call.
_INLINE: Final[dict[Write, list[str]]] = {
    _string: [
        "if type(value) is str:",
        "    data = value.encode()",
        "    size = len(data)",
        "    if size < 64:",
        "        out += _PRESENT_TEXT[size]",
        "    else:",
        "        out.append(2)",
        "        _long(size, out)",
        "    out += data",
    ],
    _long_field: [
        "if type(value) is int and _LONG_MIN <= value <= _LONG_MAX:",
        "    out.append(2)",
        "    _long(value, out)",
    ],
    _double: ["if type(value) is float:", "    out.append(2)", "    out += _DOUBLE(value)"],
    _boolean: ["if type(value) is bool:", "    out += b'\\x02\\x01' if value else b'\\x02\\x00'"],
}


def _generate(
    fullname: str, fields: list[tuple[str, Write, bool]], takes_any_dict: set[Write]
) -> Write:
    """Compile a record writer to straight-line Python: one block per field, no loop, no
    tuple unpacking, the common case of each field inline (the hot path of the bridge)."""
    scope: dict[str, Any] = {
        "_Mismatch": Mismatch,
        "_ABSENT": _ABSENT,
        "_long": _long,
        "_DOUBLE": _DOUBLE,
        "_LONG_MIN": LONG_MIN,
        "_LONG_MAX": LONG_MAX,
        "_PRESENT_TEXT": _PRESENT_TEXT,
        "_field": _field,
        "_rest": _rest,
        "_map_of_text": _map_of_text,
        "_known": frozenset(name for name, _, _ in fields),
    }
    lines = [
        "def write(obj, out):",
        "    if type(obj) is not dict:",
        "        raise _Mismatch",
        "    get = obj.get",
        "    unmapped = None",
        "    present = 0",
    ]
    for index, (name, write_field, branch_byte) in enumerate(fields):
        scope[f"_w{index}"] = write_field
        slow = f"unmapped = _field({name!r}, value, _w{index}, {branch_byte}, out, unmapped)"
        lines += [
            f"    value = get({name!r}, _ABSENT)",
            "    if value is _ABSENT:",
            "        out.append(0)  # the null branch: absent",
            "    else:",
            "        present += 1",
        ]
        inline = _INLINE.get(write_field) if branch_byte else None
        if inline is None and write_field in takes_any_dict:  # no fallback to prepare for
            inline = [
                "if type(value) is dict:",
                *(["    out.append(2)"] if branch_byte else []),
                f"    _w{index}(value, out)",
            ]
        if inline is None:
            lines.append(f"        {slow}")
        else:
            lines += [f"        {line}" for line in inline]
            lines += ["        else:", f"            {slow}"]
    lines += [
        "    if present < len(obj):  # members without a typed field",
        "        unmapped = _rest(obj, _known, unmapped)",
        "    if unmapped:",
        "        _map_of_text(unmapped, out)",
        "    else:",
        "        out.append(0)  # the empty map",
    ]
    code = compile("\n".join(lines), f"<writer {fullname}>", "exec")
    exec(code, scope)  # noqa: S102 - source built above from the schema's field names (repr)
    write: Write = scope["write"]
    write.__qualname__ = f"write[{fullname}]"
    return write
