"""`bridge replay FILE`: re-send archived notifications (JSON lines or a JSON array) to a bridge
URL or straight to Kafka, with progress and a summary. Duplicates are suppressed by event id:
within the file here, and by the bridge (or this run's pipeline) against what it stored."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import orjson

from bridge.container import build_pipeline
from bridge.errors import BridgeError, InvalidNotification
from bridge.kafka.client import reading
from bridge.kafka.publish import KafkaPublisher
from bridge.notifications.parse import parse_notification
from bridge.notifications.routing import dead_letter_id, topics_of
from bridge.settings import Settings

RETRIES = 3


@dataclass
class Summary:
    total: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return f"{sum(self.outcomes.values())}/{self.total}: {shown or 'nothing yet'}"


def read_archive(path: Path) -> list[bytes]:
    """Each notification's JSON text: from a JSON array, or one per line (blank lines skipped)."""
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":
        return [orjson.dumps(item) for item in orjson.loads(raw)]
    return [line for line in raw.splitlines() if line.strip()]


def _event_id(body: bytes) -> str:
    try:
        return parse_notification(body).event_id
    except InvalidNotification:
        return dead_letter_id(body)


def unique(
    bodies: list[bytes], summary: Summary, stored: frozenset[str] = frozenset()
) -> Iterator[bytes]:
    seen: set[str] = set()
    for body in bodies:
        event_id = _event_id(body)
        if event_id in seen:
            summary.outcomes["duplicate in file"] += 1
            continue
        seen.add(event_id)
        if event_id in stored:
            summary.outcomes["already in Kafka"] += 1
            continue
        yield body


async def to_url(
    bodies: list[bytes],
    url: str,
    token: str | None,
    concurrency: int,
    progress: IO[str] = sys.stderr,
) -> Summary:
    summary = Summary(total=len(bodies))
    headers = {"Content-Type": "application/json", "User-Agent": "bridge-replay"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    queue = iter(unique(bodies, summary))
    last = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal last
        for body in queue:
            summary.outcomes[await _post(client, url, body, headers)] += 1
            if time.monotonic() - last > 1:
                last = time.monotonic()
                print(f"replay {summary.line()}", file=progress, flush=True)

    async with httpx.AsyncClient(timeout=15) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return summary


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> str:
    for attempt in range(RETRIES + 1):
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            outcome, wait = "failed (connection)", 1.0
        else:
            if response.status_code == 200:
                return "accepted"
            outcome = f"failed ({response.status_code})"
            if response.status_code != 503:
                return outcome
            wait = min(5.0, float(response.headers.get("retry-after", "1")))
        if attempt < RETRIES:
            await asyncio.sleep(wait)
    return outcome


async def to_kafka(
    bodies: list[bytes], settings: Settings, progress: IO[str] = sys.stderr
) -> Summary:
    """Straight to Kafka through the same pipeline as the service (no spool: a failure is
    reported, and the replay can be run again)."""
    summary = Summary(total=len(bodies))
    stored = await stored_event_ids(settings)
    pipeline = build_pipeline(
        settings.model_copy(update={"spool_dir": None}), KafkaPublisher(settings)
    )
    await pipeline.publisher.start()
    last = time.monotonic()
    try:
        for body in unique(bodies, summary, stored):
            try:
                outcome = await pipeline.accept(body, "application/json")
            except BridgeError as exc:
                summary.outcomes[f"failed ({exc.code})"] += 1
            else:
                kind = "dead letter" if outcome.prepared.type == "dlq" else outcome.outcome
                summary.outcomes[kind] += 1
            if time.monotonic() - last > 1:
                last = time.monotonic()
                print(f"replay {summary.line()}", file=progress, flush=True)
    finally:
        await pipeline.publisher.stop(timeout=10)
    return summary


async def stored_event_ids(settings: Settings, idle: float = 2.0) -> frozenset[str]:
    """The `event-id` header of every record already in the topics (values are not read)."""
    found: set[str] = set()
    topics = topics_of(settings)
    client_id = f"{settings.kafka_client_id}-replay"
    async with reading(settings, topics, client_id=client_id) as read:
        async for message in read.records(idle):
            headers = dict(message.headers)
            if "event-id" in headers:
                found.add(headers["event-id"].decode())
    return frozenset(found)
