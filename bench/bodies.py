"""Request bodies for the benchmark, each with a unique event id (so none is a duplicate)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notifications"
MARK = "@@N@@"


def _template(kind: str, *, small: bool = False) -> bytes:
    data = orjson.loads((SAMPLES / f"{kind}.json").read_bytes())
    if small:  # a call-only notification: the envelope and a short call
        data = {k: v for k, v in data.items() if k not in {"waba_template", "chatbot"}}
        data["call"] = {
            k: v
            for k, v in data["call"].items()
            if k not in {"asr_result", "redial_call", "question_answer"}
        }
        data["callee"] = {k: data["callee"][k] for k in ("case_id", "callee_name", "callee_number")}
    data["callee"]["case_id"] = f"case-{MARK}"
    section = {"call": "call", "waba_template": "waba_template", "chatbot": "chatbot"}[kind]
    field = "msg_id" if kind == "waba_template" else "call_id"
    data[section][field] = f"id-{MARK}"
    return orjson.dumps(data)


def _maker(template: bytes, cases: int) -> Callable[[int], bytes]:
    head, middle, tail = template.split(MARK.encode())

    def make(i: int) -> bytes:
        return head + str(i % cases).encode() + middle + str(i).encode() + tail

    return make


def stream(name: str, cases: int = 10_000) -> Iterator[bytes]:
    """Endless bodies: `example` (the vendor's), `small` (call only), or `mix` (all three)."""
    if name == "example":
        makers = [_maker(_template("call"), cases)]
    elif name == "small":
        makers = [_maker(_template("call", small=True), cases)]
    else:
        makers = [_maker(_template(k), cases) for k in ("call", "waba_template", "chatbot")]
    for i in itertools.count():
        yield makers[i % len(makers)](i)


BODIES = ("example", "small", "mix")
