"""The HTTP service: app factory, lifespan, routes, and the one error handler."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final, TypedDict

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.budget import Budget
from bridge.container import Container
from bridge.errors import BodyTimeout, BodyTooLarge, BridgeError
from bridge.http.auth import Guard, bearer_token, require_credentials
from bridge.kafka.publish import Publisher
from bridge.pipeline import Outcome, Pipeline
from bridge.settings import Settings, load_settings
from bridge.telemetry.logs import log_notification, request_id
from bridge.telemetry.metrics import Metrics

logger = logging.getLogger("bridge.notification")

WEBHOOK_PATH = "/webhooks/airudder"
_TOKEN_PREFIX: Final = WEBHOOK_PATH + "/"
_EMPTY_OBJECT = b"{}"
OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()


class State(TypedDict):
    pipeline: Pipeline
    settings: Settings
    guard: Guard


# Exactly what Starlette answers for a path it does not know: a refused request learns nothing.
def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def create_app(
    settings: Settings | None = None,
    publisher: Publisher | None = None,
    *,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the service. Settings default to the `BRIDGE_*` environment; `metrics` are the
    process's when its server counts into them too (`http.supervisor.serving`)."""
    settings = settings or load_settings()
    require_credentials(settings)
    guard = Guard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        # Everything with a lifetime is built, started and stopped by the container.
        container = Container(settings, publisher, metrics)
        await container.start()
        try:
            yield {"pipeline": container.pipeline, "settings": settings, "guard": guard}
        finally:
            await container.stop()

    webhook = _Webhook(_RequestIds(), Budget(settings.body_timeout))
    return Starlette(
        routes=[
            # Every method (none named): without a token, even the method must not tell that
            # the path exists. `_Dispatch` takes these paths first; the routes stay for the
            # forms it leaves to Starlette (a root path, a trailing newline) and for the docs.
            Route(WEBHOOK_PATH, webhook),
            Route(_TOKEN_PREFIX + "{token}", webhook),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", exposition, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        # Inside ServerErrorMiddleware (the unexpected still gets its 500), before the rest.
        middleware=[Middleware(_Dispatch, webhook=webhook)],
        exception_handlers={BridgeError: bridge_error},
        lifespan=lifespan,
    )


class _Dispatch:
    """The webhook's requests straight to it, ahead of Starlette's exception middleware and
    router: they were a tenth of the instructions of a request (issue 22). Only the paths the
    router would give the webhook, with the same token; every other request (other routes,
    the lifespan, websockets) goes on through Starlette."""

    def __init__(self, app: ASGIApp, webhook: _Webhook) -> None:
        self.app = app
        self.webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if path == WEBHOOK_PATH:
                await self.webhook.serve(scope, receive, send, None)
                return
            if path.startswith(_TOKEN_PREFIX):
                token = path[len(_TOKEN_PREFIX) :]
                if token and "/" not in token:  # the router's `{token}`: `[^/]+`
                    await self.webhook.serve(scope, receive, send, token)
                    return
        await self.app(scope, receive, send)


class _Webhook:
    """The webhook as a plain ASGI app: the hot path, so no Request or Response objects are
    built for it. It answers its own BridgeErrors with `bridge_error`, as Starlette's exception
    middleware would: `_Dispatch` calls it ahead of that middleware."""

    def __init__(self, request_ids: _RequestIds, body_budget: Budget) -> None:
        self._request_id = request_ids
        self._body_budget = body_budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Reached through Starlette's router."""
        await self.serve(scope, receive, send, scope["path_params"].get("token"))

    async def serve(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        started = time.monotonic()
        headers = _headers(scope)
        rid = self._request_id(headers.get(b"x-request-id"))
        request_id.set(rid)
        state = scope["state"]
        pipeline: Pipeline = state["pipeline"]
        refused = _refuse(scope, headers, token, state["guard"], pipeline)
        if refused is None and scope["method"] != "POST":
            refused = PlainTextResponse("Method Not Allowed", 405, headers={"Allow": "POST"})
        if refused is not None:
            await refused(scope, receive, send)
            return
        try:
            outcome = await _store(pipeline, self._body_budget, headers, receive)
        except BridgeError as exc:  # before any answer was sent: the handler answers
            response = await bridge_error(Request(scope, receive, send), exc)
            await response(scope, receive, send)
            return
        if outcome is None:
            return
        prepared, delivery = outcome.prepared, outcome.delivery
        seconds = time.monotonic() - started
        pipeline.metrics.count(prepared.type, outcome.outcome, seconds)
        log_notification(
            logger,
            outcome=outcome.outcome,
            kind=prepared.type,
            case_id=prepared.case_id,
            event_id=prepared.event_id,
            topic=prepared.record.topic,
            partition=delivery.partition if delivery else None,
            offset=delivery.offset if delivery else None,
            reason=prepared.reason or None,
            latency_ms=round(seconds * 1000, 2),
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_OK_HEADERS, (b"x-request-id", rid.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": _EMPTY_OBJECT})


_OK_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_EMPTY_OBJECT)).encode()),
)
_WANTED = frozenset(
    {b"authorization", b"content-length", b"content-type", b"x-forwarded-for", b"x-request-id"}
)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers the webhook reads, in one pass (the first of each)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value
    return found


class _RequestIds:
    """The caller's X-Request-Id when it is a sane token, else a new one: unique per app
    (a random prefix, then a counter), and cheap."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._next = itertools.count(1)

    def __call__(self, given: bytes | None) -> str:
        if given and len(given) <= 64 and given.replace(b"-", b"").replace(b"_", b"").isalnum():
            return given.decode("ascii")
        return f"{self._prefix}{next(self._next):x}"


async def _store(
    pipeline: Pipeline,
    body_budget: Budget,
    headers: dict[bytes, bytes],
    receive: Receive,
) -> Outcome | None:
    """Read the body and hand it to the pipeline; None when the client went away first."""
    settings = pipeline.settings
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    pipeline.admit()  # after authentication: strangers never hold a slot
    try:
        try:
            # One timer for every body read (an asyncio.timeout each was ~29k instructions).
            body = await body_budget.wait(
                read_body(receive, headers.get(b"content-length"), settings.max_body_bytes)
            )
        except TimeoutError:
            message = f"body not received within {settings.body_timeout:g}s"
            raise BodyTimeout(message) from None
        except ClientDisconnect:  # nothing was stored and no one is left to answer
            pipeline.metrics.rejected.labels("client_disconnected").inc()
            logger.info("the client went away before its body ended")
            return None
        return await pipeline.accept(body, content_type)
    finally:
        pipeline.release()


def _refuse(
    scope: Scope,
    headers: dict[bytes, bytes],
    token: str | None,
    guard: Guard,
    pipeline: Pipeline,
) -> Response | None:
    """The answer for a request that may not post, or None. Tokens are never logged."""
    client = scope.get("client")
    forwarded = headers.get(b"x-forwarded-for")
    address = guard.client_address(
        client[0] if client else None, forwarded.decode("latin-1") if forwarded else None
    )
    if not guard.allowed(address):
        pipeline.metrics.rejected.labels("address_not_allowed").inc()
        logger.warning("refused: address %s not allowed", address)
        return _not_found()
    authorization = headers.get(b"authorization")
    token = token or bearer_token(authorization.decode("latin-1") if authorization else None)
    if not guard.authorized(token):
        # Failures only are throttled: a stranger's guesses never lock the vendor out, even
        # behind the one address of a proxy or NAT.
        wait = guard.failed(address)
        if wait is not None:
            pipeline.metrics.rejected.labels("auth_rate_limited").inc()
            return PlainTextResponse(
                "Too Many Requests", status_code=429, headers={"Retry-After": str(wait)}
            )
        pipeline.metrics.rejected.labels("unauthorized").inc()
        logger.warning("refused: no valid token from %s", address)
        return _not_found()
    return None


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def healthz(_: Request) -> Response:
    """The process is alive and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when a notification can be stored now and outlive a Kafka stall (the spool can
    write; without a spool, Kafka is reachable).
    Each dependency's state is in the body, so a failing one is named."""
    pipeline: Pipeline = request.state.pipeline
    ready, checks = await pipeline.readiness()
    status = "ready" if all(v in {"ok", "disabled"} for v in checks.values()) else "degraded"
    return JSONResponse(
        {"status": status if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)  # noqa: S101 - registered for BridgeError only
    headers = {}
    pipeline: Pipeline = request.state.pipeline
    pipeline.metrics.rejected.labels(exc.code).inc()
    if exc.retriable:
        headers["Retry-After"] = str(pipeline.settings.retry_after)
    headers["X-Request-Id"] = request_id.get()
    logger.warning(
        "notification rejected: %s",
        exc,
        extra={"outcome": "rejected", "status": exc.status, "error": exc.code},
    )
    return JSONResponse(
        {"error": exc.code, "detail": str(exc)}, status_code=exc.status, headers=headers
    )


async def openapi(_: Request) -> Response:
    return Response(OPENAPI, media_type="application/json")


async def exposition(request: Request) -> Response:
    pipeline: Pipeline = request.state.pipeline
    content, media_type = pipeline.metrics.exposition(pipeline)
    return Response(content, media_type=media_type)
