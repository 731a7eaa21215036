from __future__ import annotations

from pathlib import Path

import pytest

from bridge import dedup
from bridge.dedup import Deduplicator
from bridge.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(dedup.time, "time", fake)
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
