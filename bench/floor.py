"""The floor: the least a bridge built on the required parts does per request. uvicorn and
Starlette's router, orjson's parse of the body, aiokafka's `send_and_wait` of one record keyed
by the case id, acks=all; no checks, mapping, encoding, spool, log line or metrics. The value
is the body cut to the length of the bridge's Avro record for it (`BENCH_FLOOR_VALUE_BYTES`).
No implementation on these parts can be faster: its rate is the bridge's real limit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

_OK = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
}


class _Publish:
    def __init__(self, value_bytes: int) -> None:
        self.value_bytes = value_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        data = orjson.loads(body)
        producer: AIOKafkaProducer = scope["state"]["producer"]
        key = data["callee"]["case_id"].encode()
        await producer.send_and_wait(f"bench.{data['type']}", body[: self.value_bytes], key=key)
        await send(_OK)
        await send({"type": "http.response.body", "body": b"{}"})


@asynccontextmanager
async def _lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ["BENCH_FLOOR_KAFKA"], acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        yield {"producer": producer}
    finally:
        await producer.stop()


def create_app() -> Starlette:
    endpoint = _Publish(int(os.environ.get("BENCH_FLOOR_VALUE_BYTES", "5000")))
    route = Route("/webhooks/airudder/{token}", endpoint, methods=["POST"])
    return Starlette(routes=[route], lifespan=_lifespan)
