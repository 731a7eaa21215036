"""Parse stage: bytes from the vendor to a `Notification`, or `InvalidNotification`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

from bridge.errors import InvalidNotification

TYPES: Final = ("call", "waba_template", "chatbot")


@dataclass(frozen=True, slots=True)
class Notification:
    type: str
    case_id: str
    event_id: str
    data: dict[str, Any]


def parse_notification(body: bytes) -> Notification:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidNotification("not-json", str(exc)) from None
    if not isinstance(data, dict):
        raise InvalidNotification("not-an-object", type(data).__name__)
    kind = data.get("type")
    if kind not in TYPES:
        raise InvalidNotification("unknown-type", repr(kind)[:100])
    return Notification(
        type=kind, case_id=case_id_of(data), event_id=event_id_of(kind, data), data=data
    )


def case_id_of(data: dict[str, Any]) -> str:
    """`callee.case_id` as text exactly as sent; a JSON number becomes its JSON text."""
    callee = data.get("callee")
    value = callee.get("case_id") if isinstance(callee, dict) else None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return orjson.dumps(value).decode()
    raise InvalidNotification("missing-case-id", repr(value)[:100])


def event_id_of(kind: str, data: dict[str, Any]) -> str:
    """A stable id per event: the vendor's retries of one notification share it.

    The natural ids first (`call.call_id`; the WABA message id with its new status, as each
    status change is its own event; the chatbot session's `call_id`), else a hash of the
    notification's canonical JSON, so the same content always gives the same id.
    """
    section = data.get(kind)
    if isinstance(section, dict):
        if kind == "waba_template":
            msg_id, status = section.get("msg_id"), section.get("status")
            if _is_id(msg_id) and _is_id(status):
                return f"waba_template:{msg_id}:{status}"
        elif _is_id(call_id := section.get("call_id")):
            return f"{kind}:{call_id}"
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{kind}:sha256:{digest}"


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200
