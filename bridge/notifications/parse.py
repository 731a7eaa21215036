"""Parse stage: bytes from the vendor to a `Notification`, or `InvalidNotification`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

from bridge.codec.schemas import declarations
from bridge.errors import InvalidNotification

# Each notification type's event-id rule: the paths of the members its id is made of. Declared
# by the schemas (`x-notification`); these are the packaged ones', the pipeline has its own.
Rules = Mapping[str, tuple[tuple[str, ...], ...]]
RULES: Final[Rules] = {kind: d.event_id for kind, d in declarations().items()}
TYPES: Final = tuple(RULES)  # call, chatbot, waba_template: one schema each
MAX_DEPTH: Final = 254  # orjson's limit when writing; every record must be writable
# A cheap test first (a run of 20 digits anywhere), the exact one only when it passes.
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_TWENTY_DIGITS: Final = b"0" * 20
_STRING_OR_LONG_NUMBER: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d{20,}')
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # what orjson reads exactly


@dataclass(frozen=True, slots=True)
class Notification:
    type: str
    case_id: str
    event_id: str
    data: dict[str, Any]


def parse_notification(body: bytes, rules: Rules = RULES) -> Notification:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "too-deep" if "depth limit" in str(exc) else "not-json"
        raise InvalidNotification(reason, str(exc)) from None
    if not isinstance(data, dict):
        raise InvalidNotification("not-an-object", type(data).__name__)
    # orjson keeps the last of duplicate keys, silently: refuse instead (nothing may be lost).
    # Each key brings one ':' outside strings, in the body and in its re-serialisation alike.
    try:
        canonical = orjson.dumps(data)
    except TypeError:  # orjson writes at most 254 levels (and reads 1024)
        raise InvalidNotification("too-deep", f"nested deeper than {MAX_DEPTH} levels") from None
    if body.count(b":") > canonical.count(b":"):
        raise InvalidNotification("duplicate-keys")
    # orjson reads integers beyond 64 bits as floats, losing digits: refuse those too.
    if _TWENTY_DIGITS in body.translate(_DIGITS_ONLY) and _has_huge_integer(body):
        raise InvalidNotification("number-out-of-range", "an integer beyond 64 bits")
    kind = data.get("type")
    rule = rules.get(kind) if type(kind) is str else None
    if rule is None or not isinstance(kind, str):
        raise InvalidNotification("unknown-type", repr(kind)[:100])
    return Notification(
        type=kind, case_id=case_id_of(data), event_id=_event_id(kind, rule, data), data=data
    )


def _has_huge_integer(body: bytes) -> bool:
    for match in _STRING_OR_LONG_NUMBER.finditer(body):
        token = match.group()
        if not token.startswith(b'"') and not _INT_MIN <= int(token) <= _UINT_MAX:
            return True
    return False


def case_id_of(data: dict[str, Any]) -> str:
    """`callee.case_id` as text exactly as sent; a JSON number becomes its JSON text."""
    callee = data.get("callee")
    value = callee.get("case_id") if isinstance(callee, dict) else None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return orjson.dumps(value).decode()
    raise InvalidNotification("missing-case-id", repr(value)[:100])


def event_id_of(kind: str, data: dict[str, Any], rules: Rules = RULES) -> str:
    """A stable id per event: the vendor's retries of one notification share it.

    The natural ids its schema declares first (`call.call_id`; the WABA message id with its
    new status, as each status change is its own event; the chatbot session's `call_id`), else
    a hash of the notification's canonical JSON, so the same content always gives the same id.
    """
    return _event_id(kind, rules.get(kind, ()), data)


def _event_id(kind: str, rule: tuple[tuple[str, ...], ...], data: dict[str, Any]) -> str:
    if rule:
        ids = [value for path in rule if _is_id(value := _member(data, path))]
        if len(ids) == len(rule):
            return f"{kind}:{':'.join(ids)}"
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{kind}:sha256:{digest}"


def _member(data: dict[str, Any], path: tuple[str, ...]) -> object:
    found: object = data
    for name in path:
        if not isinstance(found, dict):
            return None
        found = found.get(name)
    return found


def _is_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= 200
