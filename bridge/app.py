"""The HTTP service: app factory, lifespan, routes, and the one error handler."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.errors import BridgeError
from bridge.pipeline import Pipeline
from bridge.publish import KafkaPublisher, Publisher
from bridge.settings import Settings, load_settings

logger = logging.getLogger("bridge.notification")

WEBHOOK_PATH = "/webhooks/airudder"
_EMPTY_OBJECT = b"{}"


class State(TypedDict):
    pipeline: Pipeline
    settings: Settings


class _BodyTooLarge(BridgeError):
    status = 413


def create_app(settings: Settings | None = None, publisher: Publisher | None = None) -> Starlette:
    """Build the service. Settings default to the `BRIDGE_*` environment."""
    settings = settings or load_settings()
    publisher = publisher or KafkaPublisher(settings)
    pipeline = Pipeline(settings, publisher)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        await publisher.start()
        try:
            yield {"pipeline": pipeline, "settings": settings}
        finally:
            await publisher.stop(timeout=5.0)

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive_notification, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={BridgeError: bridge_error},
        lifespan=lifespan,
    )


async def receive_notification(request: Request) -> Response:
    started = time.monotonic()
    pipeline: Pipeline = request.state.pipeline
    body = await read_body(request, pipeline.settings.max_body_bytes)
    outcome = await pipeline.accept(body, request.headers.get("content-type", ""))
    logger.info(
        "notification outcome=%s type=%s case_id=%s event_id=%s topic=%s partition=%d "
        "offset=%d reason=%s latency_ms=%.1f",
        outcome.outcome,
        outcome.type,
        outcome.case_id,
        outcome.event_id,
        outcome.delivery.topic,
        outcome.delivery.partition,
        outcome.delivery.offset,
        outcome.reason or "-",
        (time.monotonic() - started) * 1000,
    )
    return Response(_EMPTY_OBJECT, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"body larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    pipeline: Pipeline = request.state.pipeline
    return JSONResponse({"status": "ready", "topic_prefix": pipeline.settings.topic_prefix})


async def bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)  # noqa: S101 - registered for BridgeError only
    headers = {}
    if exc.retriable:
        settings: Settings = request.state.settings
        headers["Retry-After"] = str(settings.retry_after)
        logger.warning("notification outcome=rejected status=%d error=%s", exc.status, exc)
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
