"""The ceiling: a bare Starlette endpoint that reads the body and answers {}."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    await request.body()
    return Response(b"{}", media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[Route("/webhooks/airudder/{token}", receive, methods=["POST"])])
