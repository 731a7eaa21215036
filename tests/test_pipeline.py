"""Spool, order, duplicates and backpressure, with the in-memory publisher as Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.container import build_pipeline
from bridge.errors import Overloaded, PublishError, SpoolFull
from bridge.kafka.publish import MemoryPublisher
from bridge.pipeline import Pipeline
from bridge.settings import load_settings
from bridge.state.spool import Spool
from tests.helpers import SwitchablePublisher, fill_disk, notification, tmpfs


def call_ids(publisher: MemoryPublisher, case: str) -> list[str]:
    # the event-id header carries call_id: enough to check order
    return [
        dict(m.headers)["event-id"].decode().removeprefix("call:")
        for m in publisher.topics["p.call"]
        if m.key == case.encode()
    ]


@pytest.fixture
def publisher() -> SwitchablePublisher:
    return SwitchablePublisher()


@pytest.fixture
async def pipeline(publisher: SwitchablePublisher, tmp_path: Path) -> AsyncIterator[Pipeline]:
    settings = load_settings(topic_prefix="p.", spool_dir=tmp_path, max_in_flight=2)
    spool = Spool(tmp_path, settings.spool_max_bytes)
    await spool.open()
    await publisher.start()
    yield build_pipeline(settings, publisher, spool)
    await spool.close()


@pytest.fixture
async def on_small_disk(
    publisher: SwitchablePublisher, tmp_path: Path
) -> AsyncIterator[tuple[Pipeline, Path]]:
    """A pipeline whose spool is on a tmpfs of 4 MiB, and that disk."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        settings = load_settings(topic_prefix="p.", spool_dir=disk)
        spool = Spool(disk, settings.spool_max_bytes)
        await spool.open()
        await publisher.start()
        yield build_pipeline(settings, publisher, spool), disk
        await spool.close()


async def test_when_kafka_is_down_notifications_are_spooled_then_drained_in_order(
    pipeline: Pipeline, publisher: SwitchablePublisher
) -> None:
    assert (await pipeline.accept(notification("a", 0))).outcome == "stored"
    publisher.down = True
    for step in range(1, 4):
        assert (await pipeline.accept(notification("a", step))).outcome == "spooled"
        assert (await pipeline.accept(notification("b", step))).outcome == "spooled"
    assert pipeline.spool is not None
    assert pipeline.spool.depth == 6
    with pytest.raises(PublishError):
        await pipeline.drain_once()
    publisher.down = False
    assert await pipeline.drain_once() == 6
    assert pipeline.spool.depth == 0
    assert pipeline.kafka_up
    assert call_ids(publisher, "a") == ["a/0", "a/1", "a/2", "a/3"]
    assert call_ids(publisher, "b") == ["b/1", "b/2", "b/3"]


async def test_a_case_with_entries_waiting_goes_behind_them_even_when_kafka_is_back(
    pipeline: Pipeline, publisher: SwitchablePublisher
) -> None:
    publisher.down = True
    await pipeline.accept(notification("a", 1))
    publisher.down = False
    pipeline.kafka_up = True  # as if another case had just been acknowledged
    assert (await pipeline.accept(notification("a", 2))).outcome == "spooled"
    assert (await pipeline.accept(notification("b", 1))).outcome == "stored"
    await pipeline.drain_once()
    assert call_ids(publisher, "a") == ["a/1", "a/2"]


async def test_a_retry_of_a_stored_notification_is_dropped(pipeline: Pipeline) -> None:
    assert (await pipeline.accept(notification("a", 1))).outcome == "stored"
    assert (await pipeline.accept(notification("a", 1))).outcome == "duplicate"


async def test_a_failed_attempt_does_not_hide_the_retry(
    publisher: SwitchablePublisher, tmp_path: Path
) -> None:
    settings = load_settings(topic_prefix="p.", spool_dir="")
    pipeline = build_pipeline(settings, publisher)
    await publisher.start()
    publisher.down = True
    with pytest.raises(PublishError):
        await pipeline.accept(notification("a", 1))
    publisher.down = False
    assert (await pipeline.accept(notification("a", 1))).outcome == "stored"


async def test_a_full_spool_is_refused_and_nothing_is_remembered(
    publisher: SwitchablePublisher, tmp_path: Path
) -> None:
    settings = load_settings(topic_prefix="p.", spool_dir=tmp_path)
    spool = Spool(tmp_path, max_bytes=1000)  # smaller than one notification
    await spool.open()
    await publisher.start()
    pipeline = build_pipeline(settings, publisher, spool)
    publisher.down = True
    with pytest.raises(SpoolFull):
        await pipeline.accept(notification("a", 1))
    assert not pipeline.dedup.seen("call:a/1")
    await spool.close()


async def test_in_flight_work_is_bounded(pipeline: Pipeline) -> None:
    pipeline.admit()
    pipeline.admit()
    with pytest.raises(Overloaded):
        pipeline.admit()
    assert pipeline.in_flight == 2
    pipeline.release()
    pipeline.release()
    assert pipeline.in_flight == 0


async def test_readiness_names_the_failing_dependency(
    pipeline: Pipeline, publisher: SwitchablePublisher
) -> None:
    assert await pipeline.readiness() == (True, {"kafka": "ok", "topics": "ok", "spool": "ok"})
    await publisher.stop(1)
    assert await pipeline.readiness() == (
        True,
        {"kafka": "not started", "topics": "ok", "spool": "ok"},
    )
    assert pipeline.spool is not None
    await pipeline.spool.close()
    ready, checks = await pipeline.readiness()
    assert not ready
    assert checks["kafka"] == "not started"
    assert "closed" in checks["spool"]


@pytest.mark.mount
async def test_a_spool_that_cannot_write_is_not_ready_even_with_kafka_up(
    on_small_disk: tuple[Pipeline, Path],
) -> None:
    pipeline, disk = on_small_disk
    assert await pipeline.readiness() == (True, {"kafka": "ok", "topics": "ok", "spool": "ok"})
    fill_disk(disk / "filler")
    ready, checks = await pipeline.readiness()
    assert (ready, checks["kafka"]) == (False, "ok")
    assert checks["spool"].startswith("disk full"), checks
    (disk / "filler").unlink()
    assert await pipeline.readiness() == (True, {"kafka": "ok", "topics": "ok", "spool": "ok"})


@pytest.mark.mount
async def test_a_drain_whose_deletes_the_full_disk_refuses_sends_nothing_twice(
    publisher: SwitchablePublisher, on_small_disk: tuple[Pipeline, Path]
) -> None:
    pipeline, disk = on_small_disk
    spool = pipeline.spool
    assert spool is not None
    publisher.down = True
    for step in range(40):
        await pipeline.accept(notification(f"c{step % 4}", step))
    assert spool.reserve is not None
    spool.reserve.release()  # and the rest of the disk taken by someone else
    fill_disk(disk / "filler")
    publisher.down = False
    assert await pipeline.drain_once() == 40  # the whole batch, though none is deleted
    assert spool.depth == 0
    assert await pipeline.drain_once() == 0
    assert 0 < len(spool.pending) <= 40  # in Kafka, recorded, not all deleted yet
    (disk / "filler").unlink()
    assert await spool.check() is None  # deleted now, and the reserve taken again
    assert spool.pending == set()
    sent = [dict(m.headers)["event-id"] for m in publisher.topics["p.call"]]
    assert len(sent) == len(set(sent)) == 40
    for case in range(4):
        assert call_ids(publisher, f"c{case}") == [f"c{case}/{s}" for s in range(case, 40, 4)]
