"""The HTTP contract, with the in-memory publisher (the Kafka path is in test_kafka.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Match, Route
from starlette.testclient import TestClient
from starlette.types import Message, Scope

from bridge.codec.encode import Codec
from bridge.codec.mapping import Mapper
from bridge.codec.schemas import load_schemas
from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
from tests.helpers import StalledPublisher, sample, sample_bytes

SCHEMAS = load_schemas()


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def client(publisher: MemoryPublisher, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(load_settings(topic_prefix="test.", spool_dir=tmp_path), publisher)
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize("kind", ["call", "waba_template", "chatbot"])
def test_a_notification_is_stored_in_its_topic_keyed_by_case_id(
    client: TestClient, publisher: MemoryPublisher, kind: str
) -> None:
    response = client.post(
        WEBHOOK_PATH, content=sample_bytes(kind), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.content == b"{}"
    assert response.headers["content-type"] == "application/json"
    [message] = publisher.topics[f"test.{kind}"]
    assert message.key == b"12345.0"
    schema, record = Codec(SCHEMAS).decode(message.value)
    assert Mapper(schema).to_notification(record) == sample(kind)
    assert dict(message.headers)["notification-type"] == kind.encode()


def test_a_numeric_case_id_becomes_its_text_as_key(
    client: TestClient, publisher: MemoryPublisher
) -> None:
    data = sample("call")
    data["callee"]["case_id"] = 12345
    assert client.post(WEBHOOK_PATH, content=orjson.dumps(data)).status_code == 200
    assert publisher.topics["test.call"][0].key == b"12345"


@pytest.mark.parametrize(
    ("body", "reason", "key"),
    [
        (b"{not json", b"not-json", None),
        (b'{"type": "sms", "callee": {"case_id": "c1"}}', b"unknown-type", b"c1"),
        (b'{"type": "call", "callee": {}}', b"missing-case-id", None),
        (b"\x00\xff binary", b"not-json", None),
    ],
)
def test_what_cannot_be_typed_goes_to_the_dead_letter_topic_and_is_answered_2xx(
    client: TestClient,
    publisher: MemoryPublisher,
    body: bytes,
    reason: bytes,
    key: bytes | None,
) -> None:
    response = client.post(WEBHOOK_PATH, content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    [message] = publisher.topics["test.dlq"]
    assert message.value == body
    assert message.key == key
    headers = dict(message.headers)
    assert headers["dlq-reason"] == reason
    assert headers["content-type"] == b"text/plain"
    assert not publisher.topics["test.call"]


def test_a_body_over_the_limit_is_refused_with_413(
    client: TestClient, publisher: MemoryPublisher
) -> None:
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert client.post(WEBHOOK_PATH, content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(2000):
            yield b"x" * 1024

    assert client.post(WEBHOOK_PATH, content=chunks()).status_code == 413
    assert not publisher.topics


def test_only_post_is_accepted(client: TestClient) -> None:
    assert client.get(WEBHOOK_PATH).status_code == 405


def test_without_a_spool_no_acknowledgement_in_the_budget_is_503_with_retry_after() -> None:
    settings = load_settings(ack_timeout=0.3, retry_after=60, spool_dir="")
    with TestClient(create_app(settings, StalledPublisher())) as client:
        started = time.monotonic()
        response = client.post(WEBHOOK_PATH, content=sample_bytes())
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert response.json()["error"] == "kafka_timeout"
    assert "acknowledgement" in response.json()["detail"]
    assert elapsed < 2


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_the_lifespan_starts_and_stops_the_publisher(
    publisher: MemoryPublisher, tmp_path: Path
) -> None:
    with TestClient(create_app(load_settings(spool_dir=tmp_path), publisher)):
        assert publisher.started
    assert not publisher.started


def test_a_retry_after_a_restart_is_still_a_duplicate(
    publisher: MemoryPublisher, tmp_path: Path
) -> None:
    settings = load_settings(spool_dir=tmp_path)
    with TestClient(create_app(settings, publisher)) as first:
        assert first.post(WEBHOOK_PATH, content=sample_bytes("call")).status_code == 200
    with TestClient(create_app(settings, publisher)) as again:  # its ids read back from the spool
        assert again.post(WEBHOOK_PATH, content=sample_bytes("call")).status_code == 200
        assert re.search(r"^bridge_dedup_event_ids 1\.0$", again.get("/metrics").text, re.MULTILINE)
        text = again.get("/metrics").text
    assert 'bridge_notifications_total{outcome="duplicate",type="call"} 1.0' in text
    assert sum(len(log) for log in publisher.topics.values()) == 1


def test_metrics_count_outcomes_and_rejections_with_bounded_labels(client: TestClient) -> None:
    client.post(WEBHOOK_PATH, content=sample_bytes("call"))
    client.post(WEBHOOK_PATH, content=sample_bytes("call"))  # the vendor's retry
    client.post(WEBHOOK_PATH, content=b"nope")
    client.post(WEBHOOK_PATH, content=b"x" * (2 * 1024 * 1024))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'bridge_notifications_total{outcome="stored",type="call"} 1.0' in text
    assert 'bridge_notifications_total{outcome="duplicate",type="call"} 1.0' in text
    assert 'bridge_notifications_total{outcome="stored",type="dlq"} 1.0' in text
    assert 'bridge_rejected_total{reason="body_too_large"} 1.0' in text
    assert 'bridge_store_latency_seconds_count{outcome="stored"} 2.0' in text
    assert "bridge_spool_depth 0.0" in text
    assert "bridge_in_flight 0.0" in text
    assert 'bridge_build_info{python="' in text
    assert "12345.0" not in text  # never a case id in a label


# The webhook's paths are taken ahead of Starlette's router (`_Dispatch`); the router still has
# them, for the forms the dispatcher leaves to it. Both must answer alike, and every other
# request must stay Starlette's.


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths Starlette's router was asked to match."""
    asked: list[str] = []
    matches = Route.matches

    def spy(route: Route, scope: Scope) -> tuple[Match, Scope]:
        asked.append(scope["path"])
        return matches(route, scope)

    monkeypatch.setattr(Route, "matches", spy)
    return asked


def test_the_webhook_is_served_without_starlette_s_router_and_the_rest_with_it(
    client: TestClient, publisher: MemoryPublisher, routed: list[str]
) -> None:
    assert client.post(WEBHOOK_PATH, content=sample_bytes()).status_code == 200
    assert client.post(f"{WEBHOOK_PATH}/tok", content=sample_bytes("chatbot")).status_code == 200
    assert not routed
    assert len(publisher.topics["test.call"]) == len(publisher.topics["test.chatbot"]) == 1
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in [f"{WEBHOOK_PATH}/a/b", f"{WEBHOOK_PATH}x", "/nowhere"]:
        response = client.post(path, content=b"{}")
        assert (response.status_code, response.text) == (404, "Not Found")
    assert set(routed) >= {"/healthz", f"{WEBHOOK_PATH}/a/b", f"{WEBHOOK_PATH}x", "/nowhere"}


@pytest.mark.parametrize(
    ("settings", "body", "status"),
    [
        ({}, b"x" * (2 * 1024 * 1024), 413),  # BodyTooLarge
        ({"ack_timeout": 0.2, "retry_after": 7, "spool_dir": ""}, sample_bytes(), 503),
    ],
)
def test_a_bridge_error_gets_the_same_answer_with_or_without_the_router(
    settings: dict[str, object], body: bytes, status: int, tmp_path: Path, routed: list[str]
) -> None:
    app = create_app(load_settings(**{"spool_dir": tmp_path, **settings}), StalledPublisher())
    answers = []
    # A root path makes the dispatcher leave the request to Starlette's router.
    for root_path in ["", "/behind-a-proxy"]:
        with TestClient(app, root_path=root_path) as client:
            response = client.post(WEBHOOK_PATH, content=body, headers={"x-request-id": "r-1"})
            metrics = client.get("/metrics").text
        answers.append((response.status_code, dict(response.headers), response.content))
        assert (WEBHOOK_PATH in routed) == bool(root_path)
        rejected = re.findall(
            r'^bridge_rejected_total\{reason="(\w+)"\} 1\.0$', metrics, re.MULTILINE
        )
        assert len(rejected) == 1  # counted once, by the handler
    assert answers[0] == answers[1]
    status_code, headers, content = answers[0]
    assert status_code == status
    assert headers["x-request-id"] == "r-1"
    assert headers["content-type"] == "application/json"
    assert ("retry-after" in headers) == (status == 503)
    assert set(orjson.loads(content)) == {"error", "detail"}


def test_an_unexpected_error_on_the_webhook_is_a_500(client: TestClient) -> None:
    async def broken(body: bytes, content_type: str) -> None:
        raise RuntimeError(body, content_type)

    client.app_state["pipeline"].accept = broken
    with pytest.raises(RuntimeError):  # raised on to the server, which logs it
        client.post(WEBHOOK_PATH, content=sample_bytes())
    quiet = TestClient(client.app, raise_server_exceptions=False)
    quiet.app_state = client.app_state
    response = quiet.post(WEBHOOK_PATH, content=sample_bytes())
    assert (response.status_code, response.text) == (500, "Internal Server Error")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PROPFIND"])
def test_a_stranger_gets_404_whatever_the_method_and_a_caller_405(
    method: str, tmp_path: Path
) -> None:
    settings = load_settings(auth_tokens="tok", allow_unauthenticated=False, spool_dir=tmp_path)
    app = create_app(settings, MemoryPublisher())
    for root_path in ["", "/behind-a-proxy"]:  # the dispatcher's answer, then the router's
        with TestClient(app, root_path=root_path) as client:
            stranger = client.request(method, f"{WEBHOOK_PATH}/guess")
            assert stranger.status_code == 404
            assert "allow" not in stranger.headers
            caller = client.request(method, f"{WEBHOOK_PATH}/tok")
            assert caller.status_code == 405
            assert caller.headers["allow"] == "POST"


# Body deadlines: one timer for every read (`bridge.budget.Budget`), each read still answered
# 408 at its own deadline (late by at most the budget's tick of 0.1 s, never early). Driven in
# process, so a body can stall for as long as a test wants.

BODY_TIMEOUT = 0.3
# How late a deadline may be seen on a loaded machine (the budget's tick is 0.1 s): never early.
LATE = 1.0


class Call:
    """One request to the app in process: its body comes as `parts` (None: a stall)."""

    def __init__(self, app: Starlette, state: dict[str, object], parts: list[bytes | None]):
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": WEBHOOK_PATH,
            "root_path": "",
            "headers": [(b"x-request-id", b"rid")],
            "client": ("127.0.0.1", 1),
            "state": dict(state),
        }
        self.app, self.parts, self.sent = app, parts, list[Message]()

    async def receive(self) -> Message:
        part = self.parts.pop(0)
        if part is None:
            await asyncio.Event().wait()  # never
        return {"type": "http.request", "body": part, "more_body": bool(self.parts)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def __call__(self) -> tuple[int, float]:
        started = time.monotonic()
        await self.app(self.scope, self.receive, self.send)
        # A deadline's cancellation is taken back: the task can be cancelled and time out again.
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        return self.sent[0]["status"], time.monotonic() - started


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Starlette, dict[str, object]]]:
    settings = load_settings(spool_dir=tmp_path, body_timeout=BODY_TIMEOUT)
    app = create_app(settings, MemoryPublisher())
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        yield app, dict(state)


async def test_a_stalled_body_is_answered_408_at_its_deadline(
    served: tuple[Starlette, dict[str, object]],
) -> None:
    call = Call(*served, [b'{"type": ', None])
    async with asyncio.timeout(3):  # a read never timed out fails here, not by hanging
        status, elapsed = await call()
    assert status == 408
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + LATE
    assert orjson.loads(call.sent[1]["body"])["error"] == "body_timeout"


async def test_overlapping_reads_each_time_out_at_their_own_deadline(
    served: tuple[Starlette, dict[str, object]],
) -> None:
    async def later(call: Call, delay: float) -> tuple[int, float]:
        await asyncio.sleep(delay)
        return await call()

    stalled = Call(*served, [None])
    quick = Call(*served, [sample_bytes()])
    stalled_later = Call(*served, [b"{", None])
    async with asyncio.timeout(3):  # a read never timed out fails here, not by hanging
        results = await asyncio.gather(stalled(), later(quick, 0.05), later(stalled_later, 0.15))
    (first, first_s), (second, second_s), (third, third_s) = results
    assert (first, second, third) == (408, 200, 408)
    assert BODY_TIMEOUT <= first_s < BODY_TIMEOUT + LATE
    assert second_s < first_s  # not held back by the stalled read before it
    assert BODY_TIMEOUT <= third_s < BODY_TIMEOUT + LATE  # from its own start, not the first's


async def test_a_read_after_the_timer_found_nothing_still_times_out(
    served: tuple[Starlette, dict[str, object]],
) -> None:
    assert (await Call(*served, [sample_bytes()])())[0] == 200
    await asyncio.sleep(BODY_TIMEOUT + 0.1)  # the timer fired with no read left, and stopped
    async with asyncio.timeout(3):
        status, elapsed = await Call(*served, [None])()
    assert status == 408
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + LATE


async def test_a_cancellation_during_a_read_stays_a_cancellation(
    served: tuple[Starlette, dict[str, object]],
) -> None:
    call = Call(*served, [None])
    task = asyncio.create_task(call())
    await asyncio.sleep(0.05)
    task.cancel()  # the server going away, say: not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not call.sent
    async with asyncio.timeout(3):  # and the deadlines go on for the next read
        status, _ = await Call(*served, [None])()
    assert status == 408
