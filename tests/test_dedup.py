from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.settings import Settings
from bridge.state import dedup
from bridge.state.dedup import Deduplicator
from bridge.state.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)  # as dedup reads it
    return fake


def test_an_event_is_a_duplicate_only_once_remembered(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    assert not seen.seen("call:1")
    seen.remember("call:1")
    assert seen.seen("call:1")
    assert not seen.seen("call:2")


def test_an_event_is_forgotten_after_the_window(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    seen.remember("call:1")
    clock.now += 599
    assert seen.seen("call:1")
    clock.now += 2
    assert not seen.seen("call:1")
    seen.remember("call:2")  # trimming drops what expired
    assert len(seen) == 1


def test_memory_is_bounded_by_max_entries(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    for i in range(5000):
        seen.remember(f"call:{i}")
    assert len(seen) == 1000
    assert seen.seen("call:4999")
    assert not seen.seen("call:0")


def test_a_window_of_zero_turns_it_off(clock: Clock) -> None:
    seen = Deduplicator(window=0, max_entries=1000)
    seen.remember("call:1")
    assert not seen.seen("call:1")


async def test_the_window_survives_a_restart(clock: Clock, tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    seen = Deduplicator(window=600, max_entries=1000, store=spool)
    seen.remember("call:1")
    clock.now += 10
    seen.remember("call:2")
    await seen.flush()
    await spool.close()

    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    clock.now += 595  # call:1 is now 605 s old, call:2 595 s
    again = Deduplicator(window=600, max_entries=1000, store=spool)
    assert await again.load() == 1
    assert not again.seen("call:1")
    assert again.seen("call:2")
    await spool.close()


async def test_the_file_holds_no_more_ids_than_memory(clock: Clock, tmp_path: Path) -> None:
    """At a sustained rate the window (30 min) holds millions of ids: the file must not."""
    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    seen = Deduplicator(window=600, max_entries=1000, store=spool)
    for second in range(5):
        for i in range(500):
            seen.remember(f"call:{second}-{i}")
        await seen.flush()
        clock.now += 1
    stored = [row async for page in spool.remembered(0, 1_000_000) for row in page]
    assert len(stored) == len(seen) == 1000
    assert {event_id for event_id, _ in stored} == {
        f"call:{second}-{i}" for second in (3, 4) for i in range(500)
    }
    await spool.close()

    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    again = Deduplicator(window=600, max_entries=300, store=spool)  # a smaller limit after restart
    assert await again.load() == 300
    assert sum(again.seen(f"call:4-{i}") for i in range(500)) == 300
    assert not any(again.seen(f"call:3-{i}") for i in range(500))
    await spool.close()


def test_an_id_costs_little_memory(clock: Clock) -> None:
    """Memory bounds the window under load: a digest per id and one time stamp per second."""
    tracemalloc.start()
    try:
        seen = Deduplicator(window=600, max_entries=100_000)
        for i in range(50_000):
            seen.remember(f"call:{i:032x}")  # as long as the vendor's call ids
            clock.now += 0.001 if i % 100 else 1.0
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(seen) == 50_000
    assert used / 50_000 < 130  # bytes per id: 120 (it was 150, with the id's text and a float)


def test_without_a_file_nothing_waits_to_be_written(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    for i in range(5000):
        seen.remember(f"call:{i}")
    assert not seen._pending


def test_the_default_limit_keeps_the_table_small_as_ids_come_and_go(clock: Clock) -> None:
    """Past 174,762 ids a dict with entries coming and going grows its table to 2**20 slots
    (21 MB): the default stays below, where it takes 10.5 MB (measured: 200,000 ids 32 MB in
    all, 170,000 ids 20 MB)."""
    limit = Settings.model_fields["dedup_max_entries"].default
    seen = Deduplicator(window=600, max_entries=limit)
    for i in range(3 * limit):
        seen.remember(f"{i:x}")
        clock.now += 0.0005
    assert len(seen) == limit
    assert sys.getsizeof(seen._seen) < 11_000_000


def test_forgetting_the_oldest_costs_the_same_however_many_went_before(clock: Clock) -> None:
    """A dict that ids leave from the front keeps the deleted entries until it is resized, and
    finding its first live entry walks past them: 25 to 150 us an id once memory was full."""
    seen = Deduplicator(window=600, max_entries=20_000)
    for i in range(20_000):
        seen.remember(f"a{i}")
    walked = [0]

    class Counting(dict[bytes, float]):
        def __iter__(self) -> Iterator[bytes]:
            walked[0] += 1
            return super().__iter__()

    seen._seen = Counting(seen._seen)
    for i in range(20_000):
        seen.remember(f"b{i}")
        clock.now += 0.01
    assert len(seen) == 20_000
    assert walked[0] == 0  # the expiry order is kept beside the dict, not searched in it
    assert not seen.seen("a19999")
    assert seen.seen("b0")


def test_an_id_remembered_again_stays_for_its_new_stamp(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    seen.remember("call:1")
    clock.now += 300
    seen.remember("call:1")  # e.g. stored twice, by two requests at once
    seen.remember("call:2")
    clock.now += 301  # the first stamp has expired, the second not
    seen.remember("call:3")
    assert seen.seen("call:1")
    assert seen.seen("call:2")
    assert len(seen) == 3


async def test_a_file_that_holds_more_than_memory_is_cut_down(clock: Clock, tmp_path: Path) -> None:
    """Files written before the bound held every id of the window: the first flush trims them."""
    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    rows = [(f"old:{i}", clock.now - 300 + i / 10) for i in range(3000)]
    await spool.remember(rows, expired_before=0)
    seen = Deduplicator(window=600, max_entries=1000, store=spool)
    assert await seen.load() == 1000  # the newest
    assert seen.seen("old:2999")
    assert not seen.seen("old:1999")
    seen.remember("new")
    await seen.flush()
    stored = [row async for page in spool.remembered(0, 1_000_000) for row in page]
    assert len(stored) <= 1001
    assert stored[-1][0] == "new"
    await spool.close()


class Topic:
    """The event-ids topic as `SharedIds` sees it: takes batches, or refuses them."""

    def __init__(self) -> None:
        self.taking = True
        self.shared: list[tuple[bytes, float]] = []

    async def share(self, events: list[tuple[bytes, float]]) -> bool:
        if self.taking:
            self.shared += events
        return self.taking


async def test_ids_go_to_the_topic_and_to_the_file_only_when_the_topic_refuses(
    clock: Clock, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, 10_000_000)
    await spool.open()
    topic = Topic()
    seen = Deduplicator(window=600, max_entries=1000, store=spool, shared=topic)
    seen.remember("call:shared")
    await seen.flush()
    assert topic.shared == [(dedup.digest("call:shared"), clock.now)]
    topic.taking = False
    seen.remember("call:alone")
    await seen.flush()
    stored = [row async for page in spool.remembered(0, 1_000_000) for row in page]
    assert stored == [("call:alone", clock.now)]  # what only this process knows survives it
    await spool.close()


def test_an_id_learned_from_another_process_is_a_duplicate_here(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    assert seen.learn(dedup.digest("call:elsewhere"), clock.now - 0.2)
    assert seen.seen("call:elsewhere")
    assert not seen.learn(dedup.digest("call:old"), clock.now - 601)  # out of the window
    assert not seen.seen("call:old")


def test_an_own_id_coming_back_from_the_topic_is_not_added_again(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    seen.remember("call:1")
    clock.now += 0.3
    seen.remember("call:2")  # same stamp as call:1, 0.3 s later
    clock.now += 0.2
    assert not seen.learn(dedup.digest("call:2"), clock.now - 0.2)
    assert len(seen) == 2
    # Each id is in the order of expiry once: forgetting stays one step an id.
    assert sum(len(keys) for _, keys in seen._order) == 2


def test_ids_learned_a_moment_late_share_the_current_stamp(clock: Clock) -> None:
    seen = Deduplicator(window=600, max_entries=1000)
    seen.remember("call:here")
    for i in range(100):
        assert seen.learn(dedup.digest(f"call:there-{i}"), clock.now - 0.15)
    assert len(seen._order) == 1  # one stamp, not one per late id
    clock.now += 600.5
    assert not seen.seen("call:there-0")  # and they expire with it
